"""`octavo bench throughput` and `octavo bench latency`: offline runs of the engine.

Prompts are random token ids (fixed seed, special tokens avoided), so the input length is
exact; outputs run to full length (ignore_eos). A warm-up batch runs first, untimed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time

from octavo.engine.args import add_engine_args, config_from_args


def random_prompts(vocab_size: int, num_special: int, n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(num_special, vocab_size) for _ in range(length)] for _ in range(n)]


def _llm(args):
    from octavo import LLM

    return LLM(**dataclasses.asdict(config_from_args(args)))


def _prompts(llm, args, n: int) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    num_special = max(tokenizer.all_special_ids, default=0) + 1
    return random_prompts(llm.engine.model_config.vocab_size, num_special, n, args.input_len, args.seed)


def _params(output_len: int):
    from octavo import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)


def run_throughput(args) -> dict:
    llm = _llm(args)
    prompts = _prompts(llm, args, args.num_prompts)
    llm.generate(prompt_token_ids=prompts[:2], sampling_params=_params(4))
    start = time.perf_counter()
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=_params(args.output_len))
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"num_prompts": len(prompts), "input_len": args.input_len, "output_len": args.output_len,
            "elapsed_s": round(elapsed, 3), "requests_per_s": round(len(prompts) / elapsed, 4),
            "output_tokens_per_s": round(generated / elapsed, 2),
            "total_tokens_per_s": round((generated + len(prompts) * args.input_len) / elapsed, 2)}


def run_latency(args) -> dict:
    """End-to-end time of one batch; decode tokens/s from the time after the first token."""
    llm = _llm(args)
    engine = llm.engine
    prompts = _prompts(llm, args, args.batch_size)
    llm.generate(prompt_token_ids=prompts, sampling_params=_params(4))
    e2e, decode_rates = [], []
    for rep in range(args.num_iters):
        for i, ids in enumerate(prompts):
            engine.add_request(f"lat-{rep}-{i}", {"prompt_token_ids": ids}, _params(args.output_len))
        start = time.perf_counter()
        first = None
        while engine.has_unfinished_requests():
            engine.step()
            first = first or time.perf_counter()
        end = time.perf_counter()
        e2e.append(end - start)
        decode_rates.append(args.batch_size * (args.output_len - 1) / (end - first))
    return {"batch_size": args.batch_size, "input_len": args.input_len, "output_len": args.output_len,
            "e2e_s_median": round(statistics.median(e2e), 4),
            "decode_tokens_per_s_median": round(statistics.median(decode_rates), 2)}


def add_bench_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, fn, help_, defaults in (
            ("throughput", run_throughput, "offline throughput over many random prompts",
             dict(input_len=256, output_len=128)),
            ("latency", run_latency, "latency of one batch and its decode tokens/s",
             dict(input_len=128, output_len=128))):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--model", default=None)
        p.add_argument("--input-len", type=int, default=defaults["input_len"])
        p.add_argument("--output-len", type=int, default=defaults["output_len"])
        p.add_argument("--output-json", default=None)
        if name == "throughput":
            p.add_argument("--num-prompts", type=int, default=64)
        else:
            p.add_argument("--batch-size", type=int, default=1)
            p.add_argument("--num-iters", type=int, default=3)
        add_engine_args(p)
        p.set_defaults(fn=lambda args, fn=fn: _report(fn(args), args))


def _report(result: dict, args: argparse.Namespace) -> int:
    print(json.dumps(result))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
