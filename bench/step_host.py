"""Host time per engine step at N running decodes: the work around the model's forward pass.

A tiny model (2 layers, hidden 64) on the CPU backend keeps the forward pass short, so the
step time is mostly the engine's own: scheduling, building the step, sampling, updating
requests and detokenizing. The forward pass is timed with module hooks and reported
apart; `host` is the step minus it. Everything runs on one thread and is timed in that
thread's CPU time, so other processes on a shared machine disturb it little.

    python bench/step_host.py --num-seqs 256 --steps 50
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from octavo import LLM, SamplingParams
from octavo.testing.tiny_models import make_tiny_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-seqs", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="decode steps measured")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    clock = time.thread_time

    model = make_tiny_model("llama", tempfile.mkdtemp(prefix="octavo-step-host-"))
    llm = LLM(model, device="cpu", dtype="float32", max_num_seqs=args.num_seqs, num_kv_blocks=args.num_seqs * 8,
              max_num_batched_tokens=max(2048, args.num_seqs * args.prompt_len))
    engine = llm.engine
    forward_s = [0.0]
    started = [0.0]
    net = engine.worker.model
    net.register_forward_pre_hook(lambda *_: started.__setitem__(0, clock()))
    net.register_forward_hook(lambda *_: forward_s.__setitem__(0, forward_s[0] + clock() - started[0]))

    results = []
    for repeat in range(args.repeats):
        params = SamplingParams(temperature=0.0, max_tokens=args.steps + 8, ignore_eos=True)
        prompts = torch.randint(3, 900, (args.num_seqs, args.prompt_len)).tolist()
        for i, prompt in enumerate(prompts):
            engine.add_request(f"{repeat}-{i}", {"prompt_token_ids": prompt}, params)
        while engine.stats().num_waiting or engine.scheduler.running[0].num_output_tokens < 2:
            engine.step()  # prefill, then one decode step
        assert engine.stats().num_running == args.num_seqs
        steps, forwards = [], []
        for _ in range(args.steps):
            forward_s[0] = 0.0
            t0 = clock()
            engine.step()
            steps.append(clock() - t0)
            forwards.append(forward_s[0])
        while engine.has_unfinished_requests():
            engine.step()
        step_ms = statistics.median(steps) * 1e3
        forward_ms = statistics.median(forwards) * 1e3
        results.append({"step_ms": step_ms, "forward_ms": forward_ms, "host_ms": step_ms - forward_ms})
    best = min(results, key=lambda r: r["host_ms"])
    print(json.dumps({"bench": "step_host", "num_seqs": args.num_seqs, "steps": args.steps,
                      "repeats": results, "best": best}))


if __name__ == "__main__":
    main()
