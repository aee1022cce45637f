"""Guided decoding overhead: decode tokens/s under a JSON schema vs unconstrained, one batch.

Same prompts, same number of generated tokens: the schema asks for a list of at least 64
city objects, which no output can finish within --output-len tokens, so every request
decodes exactly --output-len tokens with or without the grammar (EOS ignored in both).
Decode tokens/s = batch * (output_len - 1) / (time after the first step, which holds the
prefill and the first token). The grammar is compiled by an untimed warm-up, so the timed
runs measure the per-step cost only: bitmask fill, mask on the logits, matcher advance.

`--tag` adds a structural tag per backend (a strict tool under tool_choice "auto": free text
until `<tool_call>`, then the call's schema): the model never writes the trigger here, so it
measures what every token of a reply costs while the tag waits for a call.

Runs alternate plain, guided (each --backend) --reps times in one process, so each rep's
guided/plain ratio is taken under the same machine load; the summary is the median ratio.
The time inside the manager's bitmask fill and matcher advance is recorded too.

    python bench/guided.py --model /opt/models/smollm2-135m-instruct --output bench/results/guided-DATE.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_MODEL = "/opt/models/smollm2-135m-instruct"
SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["cities"],
    "properties": {"cities": {"type": "array", "minItems": 64, "items": {
        "type": "object", "additionalProperties": False, "required": ["name", "country", "population"],
        "properties": {"name": {"type": "string", "maxLength": 40},
                       "country": {"type": "string", "maxLength": 40},
                       "population": {"type": "integer", "minimum": 0}}}}},
}


# A strict weather tool in the hermes format, as the server builds it for tool_choice "auto".
TAG = {"triggers": ["<tool_call>"], "structures": [
    {"begin": '<tool_call>\n{"name": "get_weather", "arguments": ', "end": "}\n</tool_call>",
     "schema": {"type": "object", "additionalProperties": False, "required": ["city"],
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}]}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def prompts(tokenizer, n: int) -> list[list[int]]:
    """Chat prompts asking for the JSON the schema describes (different counts per request)."""
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"List the {10 + i} largest cities of the world as JSON: name, "
                                     "country and population of each."}],
        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"] for i in range(n)]


class Timed:
    """Wraps a manager method to add up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def decode_run(engine, ids: list[list[int]], params, tag: str) -> dict:
    """One batch to completion; decode time is everything after the first step."""
    manager = engine.structured_output
    manager.bitmask, manager.accept = Timed(manager.bitmask), Timed(manager.accept)
    for i, p in enumerate(ids):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": p}, params)
    engine.step()
    first = time.perf_counter()
    fill_first = manager.bitmask.seconds + manager.accept.seconds
    steps, generated = 0, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                generated[out.request_id] = len(out.outputs[0].token_ids)
        steps += 1
    decode_s = time.perf_counter() - first
    grammar_s = manager.bitmask.seconds + manager.accept.seconds - fill_first
    del manager.bitmask, manager.accept
    return {"generated": sorted(set(generated.values())), "decode_s": decode_s, "steps": steps,
            "grammar_s": grammar_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--backend", nargs="+", default=["xgrammar", "llguidance"], dest="backends")
    p.add_argument("--tag", action="store_true", help="also time a strict tool's structural tag per backend")
    p.add_argument("--output", help="write the results JSON here")
    args = p.parse_args(argv)

    from octavo import LLM, SamplingParams
    from octavo.structured_output import StructuredOutputParams

    llm = LLM(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
              max_num_seqs=args.batch_size)
    engine = llm.engine
    ids = prompts(llm.get_tokenizer(), args.batch_size)
    configs = {"plain": None, **{b: StructuredOutputParams(json=SCHEMA, backend=b) for b in args.backends}}
    if args.tag:
        configs.update({f"{b}-tag": StructuredOutputParams(structural_tag=TAG, backend=b, disable_any_whitespace=True)
                        for b in args.backends})
    params = {name: SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True,
                                   structured_outputs=guided) for name, guided in configs.items()}
    for name, sp in params.items():  # warm-up: kernels, grammar compilation, vocabulary tables
        engine.add_request(f"warm-{name}", {"prompt_token_ids": ids[0]}, SamplingParams(
            temperature=0.0, max_tokens=8, ignore_eos=True, structured_outputs=sp.structured_outputs))
        while engine.has_unfinished_requests():
            engine.step()

    runs = []
    for rep in range(args.reps):
        for name, sp in params.items():
            r = decode_run(engine, ids, sp, f"{rep}-{name}")
            if r["generated"] != [args.output_len]:
                raise SystemExit(f"{name}: expected {args.output_len} tokens per request, got {r['generated']}")
            r.update(rep=rep, config=name, load_1m=round(os.getloadavg()[0], 2),
                     decode_tokens_per_s=round(args.batch_size * (args.output_len - 1) / r["decode_s"], 2))
            runs.append(r)
            log(f"rep {rep} {name}: {r['decode_tokens_per_s']} decode tok/s, "
                f"{1000 * r['decode_s'] / r['steps']:.2f} ms/step, grammar {1000 * r['grammar_s'] / r['steps']:.2f} ms/step")
    summary = {}
    for backend in [c for c in configs if c != "plain"]:
        ratios = [g["decode_tokens_per_s"] / pl["decode_tokens_per_s"]
                  for g, pl in zip(_of(runs, backend), _of(runs, "plain"))]
        summary[backend] = {
            "median_ratio": round(statistics.median(ratios), 4),
            "ratios": [round(x, 4) for x in ratios],
            "overhead_pct": round(100 * (1 / statistics.median(ratios) - 1), 2),
            "grammar_ms_per_step_median": round(statistics.median(
                1000 * r["grammar_s"] / r["steps"] for r in _of(runs, backend)), 3),
        }
    meta = {"model": args.model, "device": engine.backend.name, "dtype": str(engine.config.dtype),
            "batch_size": args.batch_size, "output_len": args.output_len, "reps": args.reps,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "commit": _commit(), "command": " ".join(sys.argv),
            "plain_decode_tokens_per_s_median": statistics.median(
                r["decode_tokens_per_s"] for r in _of(runs, "plain"))}
    result = {"summary": summary, "meta": meta, "schema": SCHEMA, "tag": TAG if args.tag else None, "runs": runs}
    print(json.dumps(summary))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


def _of(runs: list[dict], config: str) -> list[dict]:
    return [r for r in runs if r["config"] == config]


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    main()
