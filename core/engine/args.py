"""Engine flags shared by every command (`generate`, `serve`, `bench`), named as in vLLM.

The core's own flags come first; then each installed backend's options, in a group of its
own (`octavo.engine.options`): the core names no device flag.
"""
from __future__ import annotations

import argparse
import json

from octavo.config import RUNNERS, EngineConfig
from octavo.devices import KNOWN_DEVICES, loadable_backends
from octavo.engine.options import add_option_groups, options_from_args
from octavo.engine.vllm_compat import add_vllm_compat_args, warn_vllm_compat
from octavo.executor import EXECUTOR_BACKENDS
from octavo.structured_output.params import BACKENDS


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--device", default="auto",
                   help=f"auto, {', '.join(KNOWN_DEVICES)} or another installed backend (default: auto, "
                        "the usable one with the highest priority)")
    g.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32 (default: auto, the device's)")
    g.add_argument("--runner", choices=RUNNERS, default="generate",
                   help="generate: text (completions, chat); pooling: embeddings (/v1/embeddings, LLM.embed), "
                        "pooled as the model's sentence-transformers files say (default: generate)")
    g.add_argument("--convert", choices=("auto", "none", "embed"), default="auto",
                   help="vLLM's form: embed is --runner pooling (default: auto)")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or .gguf (default: the model's)")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length (default: the model's max_position_embeddings)")
    g.add_argument("--max-num-seqs", type=int, default=128, help="requests in one step (default: 128)")
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens in one step (default: 2048 with chunked prefill, else max_model_len)")
    g.add_argument("--block-size", type=int, default=None, help="tokens per KV block (default: the device's)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse KV blocks of shared prompt prefixes (default: on)")
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True,
                   help="split long prompts over steps (default: on)")
    g.add_argument("--kv-cache-memory", type=float, default=None, metavar="GIB",
                   help="KV cache size in GiB (default: the device's sizing, e.g. 4 GiB on the CPU as "
                        "vLLM's VLLM_CPU_KVCACHE_SPACE, profiled free memory on accelerators)")
    g.add_argument("--kv-cache-dtype", default="auto",
                   help="KV cache precision: auto (the model's dtype) or one the device offers "
                        "(see `octavo devices`; default: auto)")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="exact KV block count (overrides memory)")
    g.add_argument("--seed", type=int, default=0, help="seed of unseeded sampling (default: 0)")
    g.add_argument("--max-logprobs", type=int, default=20, help="largest logprobs a request may ask (default: 20)")
    g.add_argument("--guided-decoding-backend", choices=BACKENDS, default="xgrammar",
                   help="library for structured output; a request's own choice wins (default: xgrammar)")
    g.add_argument("--generation-config", default="auto", metavar="auto|vllm|DIR",
                   help="sampling defaults for requests that leave them unset: the model's generation config "
                        "(auto), none (vllm), or DIR/generation_config.json")
    g.add_argument("--override-generation-config", type=json.loads, default=None, metavar="JSON",
                   help='sampling defaults over the generation config\'s, e.g. \'{"temperature": 0.5}\'')
    add_vllm_compat_args(parser)
    p = parser.add_argument_group("parallelism")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="worker processes that split the model (its heads, features and vocabulary) and run "
                        "every step together (default: 1)")
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                   help="engines behind the server, each with its own workers and KV cache; requests go to "
                        "the least loaded (default: 1)")
    p.add_argument("--distributed-executor-backend", choices=EXECUTOR_BACKENDS, default=None,
                   help="how worker processes run: mp (multiprocessing, this machine) or ray (actors of a "
                        "Ray cluster, which may span machines; pip install 'octavo[ray]') (default: mp)")
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1,
                   help="not supported: pipeline parallelism is out of scope for now; any value but 1 "
                        "is refused")
    add_option_groups(parser, loadable_backends())


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    warn_vllm_compat(args)
    return EngineConfig(
        model=args.model,
        tokenizer=args.tokenizer,
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        seed=args.seed,
        runner="pooling" if args.convert == "embed" else args.runner,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_chunked_prefill=args.enable_chunked_prefill,
        block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching,
        kv_cache_memory=None if args.kv_cache_memory is None else int(args.kv_cache_memory * (1 << 30)),
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_dtype=args.kv_cache_dtype,
        max_logprobs=args.max_logprobs,
        guided_decoding_backend=args.guided_decoding_backend,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        device_options=options_from_args(args),
        generation_config=args.generation_config,
        override_generation_config=args.override_generation_config,
    )
