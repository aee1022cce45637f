"""The TPU backend on XLA's CPU client: compile time per graph and for the whole warm-up, and
steady-state decode step time against the cpu backend, same tiny model, same batches.

Not a speed claim (XLA's CPU client is a testing mode): the step-time ratio shows what the
static shapes cost here (padding to the token bucket, block tables of max_num_seqs rows, a
reference attention that gathers every token's whole block table), and the compile times
what warm-up costs. Run it in the TPU stage's environment (scripts/test_tpu.sh builds it):

    PJRT_DEVICE=CPU OCTAVO_CPU_KERNELS=0 ~/.cache/octavo/tpu-venv-*/bin/python bench/tpu_steps.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from octavo import LLM, SamplingParams
from octavo.testing.tiny_models import make_tiny_model


def step_times(llm: LLM, batch: int, steps: int, prompt_len: int) -> float:
    """Median seconds per engine step with `batch` requests decoding."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=steps + 4, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"b{batch}-{i}-{time.monotonic_ns()}", {"prompt_token_ids": list(range(3, 3 + prompt_len))}, params)
    while engine.stats().num_waiting or any(r.num_output_tokens < 2 for r in engine.scheduler.running):
        engine.step()  # prefill, then one decode step
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    while engine.has_unfinished_requests():
        engine.step()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="llama")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="alternating runs per backend; the fastest counts")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=256)
    args = p.parse_args()
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    model = make_tiny_model(args.family, tempfile.mkdtemp(prefix="octavo-tpu-bench-"))
    limits = dict(dtype="float32", max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)

    t0 = time.perf_counter()
    tpu = LLM(model, device="tpu", **limits)
    worker = tpu.engine.worker
    times = worker.runner.warm_up_times
    print(json.dumps({"what": "warm-up", "graphs": worker.num_warm_up_compiles,
                      "engine_start_s": round(time.perf_counter() - t0, 1),
                      "warm_up_s": round(sum(s for _, s in times), 1),
                      "per_graph_s": {label: round(s, 2) for label, s in times}}))
    cpu = LLM(model, device="cpu", **limits)
    for batch in args.batches:  # the machine is shared: alternate, keep each backend's least disturbed run
        runs = [[step_times(llm, batch, args.steps, args.prompt_len) for llm in (tpu, cpu)]
                for _ in range(args.repeats)]
        t_tpu, t_cpu = (min(times) for times in zip(*runs))
        print(json.dumps({"what": "decode step", "batch": batch, "tpu_cpu_client_ms": round(t_tpu * 1e3, 2),
                          "cpu_backend_ms": round(t_cpu * 1e3, 2), "ratio": round(t_tpu / t_cpu, 2)}))


if __name__ == "__main__":
    main()
