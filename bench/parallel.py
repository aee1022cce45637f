"""Tensor and data parallelism on the CPU: one engine on every core (TP=1) vs two ranks of one
core each (TP=2, gloo) vs two engines of one core each (DP=2), and what a step costs to
broadcast to worker processes. `tp1-1t` is TP=1 on one thread: one rank's share of the cores.

    python bench/parallel.py --layout tp1 tp2 dp2          # offline throughput and batch-1 decode
    python bench/parallel.py --broadcast                   # per-step broadcast cost (loads a TP=2 engine)
    python bench/parallel.py --collectives                 # gloo all-reduce and gather at the model's shapes

One JSON line per measurement, each with the CPU, the commit and the 1-minute load average
before and after (the machine is shared), then one `ratios` line comparing the layouts
measured in this run. The model is Qwen2.5-Coder-0.5B-Instruct (the Q4_K_M GGUF of the test
setup, dequantized to bf16): 14 heads and 2 KV heads split over two ranks, as SmolLM2's 9
heads do not.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import statistics
import subprocess
import time

LAYOUTS = {
    "tp1": dict(tensor_parallel_size=1, data_parallel_size=1),
    "tp1-1t": dict(tensor_parallel_size=1, data_parallel_size=1, num_threads=1),  # one core's worth
    "tp2": dict(tensor_parallel_size=2, data_parallel_size=1, num_threads=1),
    "dp2": dict(tensor_parallel_size=1, data_parallel_size=2, num_threads=1),
}


def machine() -> dict:
    """What each line is measured on: the CPU as /proc/cpuinfo names it, the cores this
    process may use, torch and the commit."""
    import torch

    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model") and key.strip() not in info:
                    info[key.strip()] = value.strip()
                if not line.strip():
                    break
    except OSError:
        pass
    cpu = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    return dict(cpu=cpu, cores=len(os.sched_getaffinity(0)), torch=torch.__version__, commit=commit)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


class Layout:
    """One layout's engine(s) behind `generate(prompt_lists, max_tokens)` -> token counts: the
    offline LLM (its loop on the main thread, where the CPU's OpenMP runs at full speed) for
    one engine, the data-parallel front (its replicas' loops in threads; the workers compute
    on their own main threads) for two."""

    def __init__(self, name: str, args):
        from octavo import LLM
        from octavo.config import EngineConfig
        from octavo.engine.data_parallel import DataParallelLLM

        settings = dict(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, **LAYOUTS[name])
        if settings["data_parallel_size"] > 1:
            self.llm, self.front = None, DataParallelLLM(EngineConfig.from_kwargs(**settings))
            self.vocab = self.front.model_config.vocab_size
        else:
            self.llm, self.front = LLM(**settings), None
            self.vocab = self.llm.engine.model_config.vocab_size

    def generate(self, batch: list[list[int]], max_tokens: int) -> list[int]:
        from octavo import SamplingParams
        from octavo.sampling_params import RequestOutputKind

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        if self.llm is not None:
            return [len(o.outputs[0].token_ids) for o in self.llm.generate(prompt_token_ids=batch,
                                                                            sampling_params=params)]

        async def one(i: int, ids: list[int]) -> int:
            async for out in self.front.generate({"prompt_token_ids": ids}, params, f"r{i}-{time.monotonic_ns()}"):
                if out.finished:
                    return len(out.outputs[0].token_ids)
            return 0

        async def run() -> list[int]:
            return await asyncio.gather(*(one(i, ids) for i, ids in enumerate(batch)))

        return asyncio.run(run())

    def shutdown(self) -> None:
        (self.front or self.llm.engine).shutdown()


def measure_layout(name: str, args) -> list[dict]:
    base = dict(layout=name, model=os.path.basename(args.model), dtype=args.dtype,
                load_before=load1())
    started = time.perf_counter()
    layout = Layout(name, args)
    base["startup_s"] = round(time.perf_counter() - started, 1)
    layout.generate(prompts(2, 16, layout.vocab, 99), 4)  # warm-up
    out = []
    batch = prompts(args.num_prompts, args.input_len, layout.vocab, args.seed)
    t0 = time.perf_counter()
    counts = layout.generate(batch, args.output_len)
    elapsed = time.perf_counter() - t0
    assert counts == [args.output_len] * len(batch), counts
    out.append(dict(base, mode="throughput", num_prompts=len(batch), input_len=args.input_len,
                    output_len=args.output_len, elapsed_s=round(elapsed, 2),
                    output_tokens_per_s=round(sum(counts) / elapsed, 2),
                    total_tokens_per_s=round((sum(counts) + args.input_len * len(batch)) / elapsed, 2),
                    load_after=load1()))
    decode = []  # batch 1: (T(n tokens) - T(1 token)) / (n - 1), fresh prompts each time
    for rep in range(args.b1_reps):
        one, full = prompts(2, args.b1_input_len, layout.vocab, args.seed + 10 + rep)
        t0 = time.perf_counter()
        layout.generate([one], 1)
        t1 = time.perf_counter()
        layout.generate([full], args.b1_output_len)
        t2 = time.perf_counter()
        decode.append((args.b1_output_len - 1) / ((t2 - t1) - (t1 - t0)))
    out.append(dict(base, mode="batch1", input_len=args.b1_input_len, output_len=args.b1_output_len,
                    decode_tokens_per_s=round(statistics.median(decode), 2),
                    runs=[round(d, 2) for d in decode], load_after=load1()))
    layout.shutdown()
    return out


def measure_broadcast(args) -> list[dict]:
    """Per step: pickling a decode step's SchedulerOutput, and the round trip of an empty step
    through two worker processes (engine -> both ranks -> rank 0's answer), which is all a
    step adds to the ranks' own compute besides their all-reduces."""
    from octavo.backend import ScheduledRequest, SchedulerOutput
    from octavo.config import EngineConfig
    from octavo.engine.llm_engine import LLMEngine

    out = []
    for num_reqs in (1, 32, 128):
        batch = SchedulerOutput([], [ScheduledRequest(f"req-{i}", 300 + i, 1, [1234 + i], [i] if i % 16 == 0 else [],
                                                      True) for i in range(num_reqs)], num_reqs, 16, {"req-x"})
        times = []
        for _ in range(2000):
            t0 = time.perf_counter()
            data = pickle.dumps(("execute_model", (batch,), False), protocol=pickle.HIGHEST_PROTOCOL)
            times.append(time.perf_counter() - t0)
        out.append(dict(mode="pickle_step", decode_requests=num_reqs, bytes=len(data),
                        us=round(statistics.median(times) * 1e6, 1)))
    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, tensor_parallel_size=2,
                                    max_model_len=args.max_model_len, device_options={"num_threads": 1}))
    empty = SchedulerOutput([], [], 0, 16)
    times = []
    for _ in range(args.broadcast_steps):
        t0 = time.perf_counter()
        engine.worker.execute_model(empty)
        engine.worker.sample_tokens(None)
        times.append(time.perf_counter() - t0)
    engine.shutdown()
    out.append(dict(mode="empty_step_round_trip", ranks=2, steps=len(times), load=load1(),
                    median_us=round(statistics.median(times) * 1e6, 1),
                    p90_us=round(sorted(times)[int(0.9 * len(times))] * 1e6, 1)))
    return out


def _collective_rank(rank: int, init_method: str, shapes: list[tuple[str, int, int]], reps: int, results) -> None:
    """One gloo rank on core `rank` with one thread, as a TP=2 worker: times each collective."""
    import torch

    from octavo.backend import ParallelRank
    from octavo.distributed import TorchCommunicator

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, [cores[rank % len(cores)]])
    torch.set_num_threads(1)
    comm = TorchCommunicator("gloo", ParallelRank(rank, 2, rank, 2, init_method), torch.device("cpu"))
    for op, rows, cols in shapes:
        x = torch.randn(rows, cols).to(torch.bfloat16)
        call = comm.all_reduce if op == "all_reduce" else comm.gather
        for _ in range(20):
            call(x.clone())
        times = []
        for _ in range(reps):  # back to back, as a step's collectives run: waits on the other rank count
            y = x.clone()
            t0 = time.perf_counter()
            call(y)
            times.append(time.perf_counter() - t0)
        if rank == 0:
            results.put((op, rows, cols, statistics.median(times), sorted(times)[int(0.9 * len(times))],
                         statistics.fmean(times)))
    comm.shutdown()


def measure_collectives(args) -> list[dict]:
    """gloo between two processes of one core each, at this model's shapes: the all-reduce
    after each attention and MLP block and the embedding ([tokens, hidden] bf16, 2 x layers
    + 1 per step) and the gather of rank 1's half of the logits to rank 0 ([rows, vocab / 2])."""
    import multiprocessing

    from octavo.distributed import Rendezvous
    from octavo.loader import load_hf_config, resolve_model_path

    hf = load_hf_config(resolve_model_path(args.model))
    per_step = 2 * hf.num_hidden_layers + 1
    shapes = [("all_reduce", tokens, hf.hidden_size) for tokens in (1, args.num_prompts, 512)]
    shapes += [("gather", rows, -(-hf.vocab_size // 2)) for rows in (1, args.num_prompts)]
    ctx = multiprocessing.get_context("spawn")
    rendezvous = Rendezvous("127.0.0.1")
    results = ctx.Queue()
    procs = [ctx.Process(target=_collective_rank, args=(r, rendezvous.init_method, shapes, args.collective_reps,
                                                        results)) for r in range(2)]
    for proc in procs:
        proc.start()
    out = []
    for _ in shapes:
        op, rows, cols, median, p90, mean = results.get(timeout=300)
        row = dict(mode=op, ranks=2, dtype="bfloat16", shape=[rows, cols], reps=args.collective_reps,
                   median_us=round(median * 1e6, 1), p90_us=round(p90 * 1e6, 1), mean_us=round(mean * 1e6, 1),
                   load=load1())
        if op == "all_reduce":  # a step of this many tokens: per_step of them, at the median
            row.update(per_step=per_step, per_step_ms=round(median * per_step * 1e3, 2))
        out.append(row)
    for proc in procs:
        proc.join(timeout=60)
    rendezvous.close()
    return out


def ratios(rows: list[dict]) -> dict | None:
    """The other layouts over tp1, from the lines of this run only."""
    figures = {(r["layout"], r["mode"]): r.get("output_tokens_per_s", r.get("decode_tokens_per_s"))
               for r in rows if "layout" in r}
    out = {}
    for mode, metric in (("throughput", "output_tokens_per_s"), ("batch1", "decode_tokens_per_s")):
        base = figures.get(("tp1", mode))
        for name in ("tp1-1t", "tp2", "dp2"):
            if base and figures.get((name, mode)):
                out[f"{name}/tp1 {metric}"] = round(figures[(name, mode)] / base, 3)
    return dict(mode="ratios", **out) if out else None


def main() -> None:
    from octavo.testing.real_models import qwen_coder_gguf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (test setup)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--layout", nargs="*", default=[], choices=sorted(LAYOUTS))
    p.add_argument("--broadcast", action="store_true")
    p.add_argument("--broadcast-steps", type=int, default=2000)
    p.add_argument("--collectives", action="store_true")
    p.add_argument("--collective-reps", type=int, default=200)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--b1-input-len", type=int, default=64)
    p.add_argument("--b1-output-len", type=int, default=64)
    p.add_argument("--b1-reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    args.model = args.model or qwen_coder_gguf()
    facts = dict(machine(), date=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def emit(row: dict) -> None:  # as measured: a later failure keeps the earlier lines
        line = json.dumps({**row, **facts})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    measured = []
    for name in args.layout:
        for row in measure_layout(name, args):
            measured.append(row)
            emit(row)
    summary = ratios(measured)
    if summary:
        emit(summary)
    if args.broadcast:
        for row in measure_broadcast(args):
            emit(row)
    if args.collectives:
        for row in measure_collectives(args):
            emit(row)


if __name__ == "__main__":
    main()
