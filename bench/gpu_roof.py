"""The HBM-bandwidth roof of batch-1 decode: weight bytes per token over measured copy bandwidth.

A decode step of one sequence reads every weight once, so no engine decodes faster than
(copy bandwidth) / (weight bytes). Bandwidth is measured here, as bytes read plus written by
a large device-to-device copy (median of timed repeats), not taken from a datasheet.

    python bench/gpu_roof.py MODEL_DIR [MODEL_DIR ...]   # one JSON line per model
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
from safetensors import safe_open


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Bytes per second moved by `dst.copy_(src)`, counting the read and the write."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * 4 / statistics.median(times)


def weight_bytes(model_dir: str, bytes_per_param: int = 2) -> int:
    """Bytes of the weights in bf16 (tied embeddings counted once, as they are read once)."""
    params = 0
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        for name in f.keys():
            params += torch.Size(f.get_slice(name).get_shape()).numel()
    return params * bytes_per_param


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    args = p.parse_args()
    bandwidth = copy_bandwidth()
    for model in args.models:
        wb = weight_bytes(model)
        print(json.dumps(dict(mode="roof", model=os.path.abspath(model), device=torch.cuda.get_device_name(),
                              copy_bandwidth_gb_s=round(bandwidth / 1e9, 1), weight_bytes=wb,
                              roof_decode_tokens_per_s=round(bandwidth / wb, 1))), flush=True)


if __name__ == "__main__":
    main()
