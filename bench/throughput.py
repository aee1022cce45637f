"""Offline throughput and batch-1 decode speed of one engine: octavo, HF transformers or vLLM.

Every engine gets the very same prompts: `--num-prompts` lists of exactly `--input-len`
random token ids (seeded; drawn from the tokenizer's ordinary range, no special tokens),
each generating exactly `--output-len` tokens (greedy, EOS ignored). The ids are made from
the model directory's files alone (tokenizer.json / config.json), so they are identical
whichever venv runs the script; `prompt_sha` in the output proves it.

Modes (each prints one JSON line per measurement on stdout; logs go to stderr):

  throughput (default)  N prompts in one offline call (HF: `generate` in batches of
                        --hf-batch-size, left padding): requests/s, output tokens/s,
                        total (prompt + output) tokens/s.
  --batch-1             one prompt of --b1-input-len (128) tokens, --b1-output-len (128) out:
                        decode tokens/s after the first token. Measured as
                        (out - 1) / (T(out tokens) - T(1 token)), medians over --b1-reps runs,
                        each run on fresh ids so no prefix cache can help.
  --all                 both, in one process (one model load).

A short warm-up on other ids (not timed) runs before any measurement.

    python bench/throughput.py --engine octavo --model /opt/models/smollm2-135m-instruct --all
    python bench/throughput.py --engine hf --model DIR --hf-batch-size 16,32,64
    VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0-1 \\
        /opt/peers/vllm/bin/python bench/throughput.py --engine vllm --model DIR --all

The vllm engine must run with the vLLM venv's python (engine imports stay inside their
functions, so each venv needs only its own engine).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import time

DEFAULT_MODEL = "/opt/models/smollm2-135m-instruct"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- prompts

def token_range(model_dir: str) -> tuple[int, int]:
    """[lo, hi) of ordinary token ids: above every added/special token, below the vocab size."""
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = int(json.load(f)["vocab_size"])
    special = [0]
    tok_path = os.path.join(model_dir, "tokenizer.json")
    if os.path.exists(tok_path):
        with open(tok_path) as f:
            tok = json.load(f)
        special += [int(t["id"]) for t in tok.get("added_tokens", [])]
        base = tok.get("model", {}).get("vocab")
        if isinstance(base, dict):
            vocab = min(vocab, len(base))
    lo = max(special) + 1
    if lo >= vocab:
        raise SystemExit(f"no ordinary token ids in {model_dir}")
    return lo, vocab


def make_prompts(model_dir: str, n: int, length: int, seed: int) -> list[list[int]]:
    lo, hi = token_range(model_dir)
    rng = random.Random(seed)
    return [[rng.randrange(lo, hi) for _ in range(length)] for _ in range(n)]


def prompt_sha(prompts: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- engines
# Each runner: runner(prompts, output_len) -> list of generated-token counts (one per prompt).

def make_octavo(args):
    from octavo import LLM, SamplingParams

    kwargs = dict(model=args.model, dtype="bfloat16", device=args.device, max_num_seqs=args.max_num_seqs,
                  extra={"enforce_eager": args.enforce_eager})
    if args.max_model_len:
        kwargs["max_model_len"] = args.max_model_len
    llm = LLM(**kwargs)

    def run(prompts, output_len):
        sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp)
        return [len(o.outputs[0].token_ids) for o in outs]

    return run, _versions("torch", "octavo")


def make_vllm(args):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype="bfloat16", max_model_len=args.max_model_len or 2048,
              seed=0)

    def run(prompts, output_len):
        sp = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return [len(o.outputs[0].token_ids) for o in outs]

    info = _versions("torch", "vllm", "transformers")
    info["vllm_env"] = {k: v for k, v in os.environ.items()
                        if k.startswith("VLLM_") or k in ("LD_PRELOAD", "OMP_NUM_THREADS")}
    return run, info


def make_hf(args):
    import torch
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    model.eval()
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    state = {"batch_size": args.hf_batch_size[0]}

    def run(prompts, output_len):
        counts = []
        bs = state["batch_size"]
        for i in range(0, len(prompts), bs):
            chunk = prompts[i:i + bs]
            width = max(len(p) for p in chunk)
            # left padding, so every row's last position is its real last token
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=output_len, min_new_tokens=output_len,
                                     pad_token_id=pad)
            counts += [out.shape[1] - width] * len(chunk)
        return counts

    run.state = state
    info = _versions("torch", "transformers")
    info["torch_threads"] = torch.get_num_threads()
    return run, info


ENGINES = {"octavo": make_octavo, "hf": make_hf, "vllm": make_vllm}


def _versions(*names) -> dict:
    out = {}
    for n in names:
        try:
            from importlib.metadata import version
            dist = {"vllm": "vllm-cpu"}.get(n, n)
            out[f"{n}_version"] = version(dist)
        except Exception:
            try:
                out[f"{n}_version"] = __import__(n).__version__
            except Exception:
                out[f"{n}_version"] = None
    return out


# --------------------------------------------------------------------------- measurements

def check_counts(counts, n, output_len, what):
    if len(counts) != n or any(c != output_len for c in counts):
        raise SystemExit(f"{what}: expected {n} x {output_len} generated tokens, got {counts}")


def measure_throughput(run, args, base) -> dict:
    prompts = make_prompts(args.model, args.num_prompts, args.input_len, args.seed)
    t0 = time.perf_counter()
    counts = run(prompts, args.output_len)
    elapsed = time.perf_counter() - t0
    check_counts(counts, args.num_prompts, args.output_len, "throughput")
    out_tokens = sum(counts)
    in_tokens = sum(len(p) for p in prompts)
    return dict(base, mode="throughput", loadavg_1m_after=round(os.getloadavg()[0], 2), num_prompts=args.num_prompts, input_len=args.input_len,
                output_len=args.output_len, prompt_sha=prompt_sha(prompts),
                elapsed_s=round(elapsed, 3),
                requests_per_s=round(args.num_prompts / elapsed, 4),
                output_tokens_per_s=round(out_tokens / elapsed, 2),
                total_tokens_per_s=round((in_tokens + out_tokens) / elapsed, 2))


def measure_batch1(run, args, base) -> dict:
    # fresh ids for every timed call (seed offset), so a prefix cache never skips the prefill
    reps = args.b1_reps
    prompts = make_prompts(args.model, 2 * reps, args.b1_input_len, args.seed + 1)
    t_first, t_full = [], []
    for r in range(reps):
        t0 = time.perf_counter()
        check_counts(run([prompts[2 * r]], 1), 1, 1, "batch-1 first token")
        t_first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        check_counts(run([prompts[2 * r + 1]], args.b1_output_len), 1, args.b1_output_len, "batch-1")
        t_full.append(time.perf_counter() - t0)
    first, full = statistics.median(t_first), statistics.median(t_full)
    decode = full - first
    return dict(base, mode="batch-1", loadavg_1m_after=round(os.getloadavg()[0], 2), input_len=args.b1_input_len, output_len=args.b1_output_len,
                reps=reps, prompt_sha=prompt_sha(prompts),
                ttft_s=round(first, 4), total_s=round(full, 4), decode_s=round(decode, 4),
                decode_tokens_per_s=round((args.b1_output_len - 1) / decode, 2),
                e2e_tokens_per_s=round(args.b1_output_len / full, 2),
                t_first_all=[round(t, 4) for t in t_first], t_full_all=[round(t, 4) for t in t_full])


def warm_up(run, args) -> float:
    t0 = time.perf_counter()
    n = min(args.num_prompts, args.warmup_prompts)
    # other ids than any timed call (seed + 2), full prompt length, short outputs
    run(make_prompts(args.model, n, args.input_len, args.seed + 2), 8)
    run(make_prompts(args.model, 1, args.b1_input_len, args.seed + 3), 8)
    return time.perf_counter() - t0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--engine", choices=sorted(ENGINES), required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-1", dest="batch1", action="store_true", help="only the batch-1 decode measurement")
    g.add_argument("--all", action="store_true", help="throughput and batch-1, one model load")
    p.add_argument("--b1-input-len", type=int, default=128)
    p.add_argument("--b1-output-len", type=int, default=128)
    p.add_argument("--b1-reps", type=int, default=3)
    p.add_argument("--hf-batch-size", default="64",
                   help="HF generate batch size; a comma list (16,32,64) measures each")
    p.add_argument("--warmup-prompts", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=0, help="octavo/vllm context limit (0: engine default; vllm 2048)")
    p.add_argument("--device", default="auto", help="octavo: the device to run on")
    p.add_argument("--max-num-seqs", type=int, default=256, help="octavo: most requests in one step")
    p.add_argument("--enforce-eager", action="store_true", help="octavo on GPUs: no CUDA graphs")
    p.add_argument("--threads", type=int, default=0, help="HF: torch threads (0: torch default)")
    p.add_argument("--tag", default="", help="free text copied into every JSON line")
    p.add_argument("--output", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    args.hf_batch_size = [int(x) for x in str(args.hf_batch_size).split(",") if x]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    base = dict(engine=args.engine, model=os.path.abspath(args.model),
                date=datetime.datetime.now().isoformat(timespec="seconds"),
                host=platform.node(), cpus=os.cpu_count(),
                loadavg_1m=round(os.getloadavg()[0], 2), tag=args.tag)
    t0 = time.perf_counter()
    run, info = ENGINES[args.engine](args)
    base.update(info, load_s=round(time.perf_counter() - t0, 2))
    log(f"[{args.engine}] loaded in {base['load_s']} s")
    base["warmup_s"] = round(warm_up(run, args), 2)
    log(f"[{args.engine}] warm-up {base['warmup_s']} s")

    results = []
    if not args.batch1:
        for bs in (args.hf_batch_size if args.engine == "hf" else [None]):
            extra = {}
            if bs is not None:
                run.state["batch_size"] = bs
                extra["hf_batch_size"] = bs
            results.append(measure_throughput(run, args, dict(base, **extra)))
            emit(results[-1], args)
    if args.batch1 or args.all:
        if args.engine == "hf":
            run.state["batch_size"] = 1
        results.append(measure_batch1(run, args, base))
        emit(results[-1], args)


def emit(result: dict, args) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    if args.output:
        with open(args.output, "a") as f:
            f.write(line + "\n")
    if result["mode"] == "throughput":
        log(f"[{result['engine']}] throughput: {result['requests_per_s']} req/s, "
            f"{result['output_tokens_per_s']} out tok/s, {result['total_tokens_per_s']} total tok/s "
            f"({result['elapsed_s']} s)")
    else:
        log(f"[{result['engine']}] batch-1: decode {result['decode_tokens_per_s']} tok/s "
            f"(ttft {result['ttft_s']} s, total {result['total_s']} s)")


if __name__ == "__main__":
    main()
