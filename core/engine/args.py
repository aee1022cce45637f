"""Engine flags shared by every command (`generate`, `serve`, `bench`), named as in vLLM."""
from __future__ import annotations

import argparse

from octavo.config import EngineConfig
from octavo.structured_output.params import BACKENDS


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--device", default="auto",
                   help="auto|cpu|openvino|cuda|rocm|tpu|xpu|neuron or an installed third-party backend")
    g.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    g.add_argument("--tokenizer", default=None)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--max-num-seqs", type=int, default=128)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--block-size", type=int, default=None)
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--kv-cache-memory", type=float, default=None, metavar="GIB",
                   help="KV cache size in GiB (CPU; as vLLM's VLLM_CPU_KVCACHE_SPACE)")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="exact KV block count (overrides memory)")
    g.add_argument("--num-threads", type=int, default=None, help="CPU threads for compute")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-logprobs", type=int, default=20)
    g.add_argument("--guided-decoding-backend", choices=BACKENDS, default="xgrammar",
                   help="library for structured output (a request's own choice wins)")
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--gpu-memory-utilization", type=float, default=None,
                     help="fraction of GPU memory for weights, activations and KV cache (default 0.9)")
    gpu.add_argument("--cuda-graph-sizes", type=int, nargs="+", default=None, metavar="N",
                     help="decode batch sizes to capture as CUDA graphs")
    gpu.add_argument("--enforce-eager", action="store_true", help="never capture CUDA graphs")


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        tokenizer=args.tokenizer,
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_chunked_prefill=args.enable_chunked_prefill,
        block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching,
        kv_cache_memory=None if args.kv_cache_memory is None else int(args.kv_cache_memory * (1 << 30)),
        num_kv_blocks=args.num_kv_blocks,
        num_threads=args.num_threads,
        max_logprobs=args.max_logprobs,
        guided_decoding_backend=args.guided_decoding_backend,
        extra=_gpu_extras(args),
    )


def _gpu_extras(args: argparse.Namespace) -> dict:
    """GPU settings travel in `config.extra`: only GPU backends read (and validate) them."""
    extra = {"enforce_eager": args.enforce_eager}
    if args.gpu_memory_utilization is not None:
        extra["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.cuda_graph_sizes is not None:
        extra["cuda_graph_sizes"] = args.cuda_graph_sizes
    return extra
