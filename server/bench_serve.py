"""`octavo bench serve`: a load generator for any OpenAI-compatible server.

Sends `--num-prompts` streaming requests to /v1/completions (random prompts as token ids, so
every request has exactly `--input-len` prompt tokens on every server) or /v1/chat/completions
(random words), or the prompts of `--prompts-file`, either at `--request-rate` (Poisson arrivals; `--burstiness` < 1 burstier) or
as fast as `--max-concurrency` allows. Several concurrencies and several servers
(`--target NAME=URL`) run one after the other in one invocation, on the same prompts.

Per request: TTFT (first streamed text), ITL (gaps between streamed chunks), TPOT
((e2e - TTFT) / (output tokens - 1)), e2e latency; per run: mean, p50, p90, p99 of each, and
request / output-token / total-token throughput. Writes a JSON result (`--result-file`) and a
PNG plot (`--plot`); with several targets, the ratios of the first target to the others.

    octavo bench serve --base-url http://127.0.0.1:8000 --input-len 128 --output-len 128 \\
        --max-concurrency 1 8 32 --num-prompts 64 --result-file serve.json --plot serve.png
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

_WORDS = ("the of and to in is that for it as with was on be by at this are from or have an but not which they "
          "you one all we can there their if more when will would who so no what up out about into than them time "
          "only new some could these two may first then do any like my now over such our man even most made after "
          "also did many before must through back years where much your way well down should because each just "
          "those people how too little state good very make world still own see men work long get here between "
          "both life being under never day same another know while last might us great old year off come since "
          "against go came right used take three").split()


@dataclass
class RequestResult:
    ok: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    start: float = 0.0


# ---------------------------------------------------------------------------- prompts


def token_pool(base_url: str, headers: dict, tokenizer: str | None) -> list[int]:
    """Ordinary token ids of the served model: from a tokenizer, else from the server's /tokenize."""
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        special = set(tok.all_special_ids)
        return [i for i in range(len(tok)) if i not in special]
    import urllib.request

    text = " ".join(_WORDS) + " " + " ".join(w.capitalize() for w in _WORDS)
    req = urllib.request.Request(base_url.rstrip("/") + "/tokenize", method="POST",
                                 data=json.dumps({"prompt": text, "add_special_tokens": False}).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            ids = json.loads(resp.read())["tokens"]
    except Exception as exc:
        raise SystemExit(f"cannot get token ids from {base_url}/tokenize ({exc}); pass --tokenizer DIR") from None
    return sorted(set(ids))


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: JSON Lines with a "prompt" field, or one prompt per line."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                prompts.append(str(json.loads(line)["prompt"]))
            else:
                prompts.append(line)
    if not prompts:
        raise SystemExit(f"no prompts in {path}")
    return prompts


def make_prompts(args, pool: list[int]) -> list[tuple[list[int] | str, int, int]]:
    """(prompt, input_len, output_len) per request, reproducible from --seed."""
    rng = random.Random(args.seed)
    out = []
    if args.prompts_file:
        given = read_prompts(args.prompts_file)
        for i in range(args.num_prompts):  # cycle through the file
            out.append((given[i % len(given)], 0, args.output_len))
        return out
    for _ in range(args.num_prompts):
        lo_in = max(1, int(args.input_len * (1 - args.range_ratio)))
        lo_out = max(1, int(args.output_len * (1 - args.range_ratio)))
        n_in = rng.randint(lo_in, args.input_len)
        n_out = rng.randint(lo_out, args.output_len)
        if args.endpoint.endswith("/chat/completions"):
            prompt: list[int] | str = " ".join(rng.choice(_WORDS) for _ in range(n_in))
        else:
            prompt = [rng.choice(pool) for _ in range(n_in)]
        out.append((prompt, n_in, n_out))
    return out


# ---------------------------------------------------------------------------- client


async def one_request(session, url: str, model: str, prompt, output_len: int, args,
                      headers: dict) -> RequestResult:
    import aiohttp

    chat = url.endswith("/chat/completions")
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "temperature": args.temperature, "ignore_eos": args.ignore_eos}
    if chat:
        body.update(messages=[{"role": "user", "content": prompt}], max_completion_tokens=output_len)
    else:
        body.update(prompt=prompt, max_tokens=output_len)
    res = RequestResult(prompt_tokens=len(prompt) if isinstance(prompt, list) else 0)
    start = res.start = time.perf_counter()
    last = start
    try:
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with session.post(url, json=body, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return res
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    data = event.decode("utf-8", "replace").strip()
                    if not data.startswith("data:"):
                        continue
                    data = data[5:].strip()
                    if data == "[DONE]":
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        res.error = str(obj["error"])[:200]
                        return res
                    if obj.get("usage"):
                        res.output_tokens = obj["usage"].get("completion_tokens", 0)
                        res.prompt_tokens = obj["usage"].get("prompt_tokens", res.prompt_tokens)
                    for choice in obj.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if text:
                            now = time.perf_counter()
                            if res.ttft == 0.0:
                                res.ttft = now - start
                            else:
                                res.itl.append(now - last)
                            last = now
        res.e2e = time.perf_counter() - start
        res.ok = res.ttft > 0.0
        if not res.ok:
            res.error = "no text streamed"
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    return res


async def run_load(url: str, model: str, prompts, args, headers: dict, concurrency: int | None,
                   rate: float) -> tuple[list[RequestResult], float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    rng = random.Random(args.seed + 1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for prompt, _, n_out in prompts[:args.num_warmups]:
            await one_request(session, url, model, prompt, n_out, args, headers)

        async def limited(prompt, n_out):
            if sem is None:
                return await one_request(session, url, model, prompt, n_out, args, headers)
            async with sem:
                return await one_request(session, url, model, prompt, n_out, args, headers)

        tasks = []
        start = time.perf_counter()
        for prompt, _, n_out in prompts:
            tasks.append(asyncio.ensure_future(limited(prompt, n_out)))
            if math.isfinite(rate) and rate > 0:
                await asyncio.sleep(rng.gammavariate(args.burstiness, 1.0 / (rate * args.burstiness)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return list(results), duration


# ---------------------------------------------------------------------------- statistics


def _stats(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    v = sorted(x * scale for x in values)

    def pct(p: float) -> float:
        k = (len(v) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    return {"mean": statistics.fmean(v), "p50": pct(50), "p90": pct(90), "p99": pct(99)}


def summarize(results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    errors = sorted({r.error for r in results if not r.ok})
    return {
        "completed": len(ok), "failed": len(results) - len(ok), "errors": errors[:5],
        "duration_s": duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
        "ttft_ms": _stats([r.ttft for r in ok]),
        "tpot_ms": _stats(tpot),
        "itl_ms": _stats([x for r in ok for x in r.itl]),
        "e2el_ms": _stats([r.e2e for r in ok]),
    }


def ratios(runs: list[dict]) -> list[dict]:
    """first target / each other target, per concurrency and rate (TTFT, TPOT p50; throughput)."""
    targets = list(dict.fromkeys(r["target"] for r in runs))
    if len(targets) < 2:
        return []
    out = []
    base = {(r["max_concurrency"], r["request_rate"]): r for r in runs if r["target"] == targets[0]}
    for r in runs:
        b = base.get((r["max_concurrency"], r["request_rate"]))
        if r["target"] == targets[0] or b is None:
            continue

        def div(a: float, c: float) -> float | None:
            return a / c if c else None

        out.append({"numerator": targets[0], "denominator": r["target"], "max_concurrency": r["max_concurrency"],
                    "request_rate": r["request_rate"],
                    "ttft_p50": div(b["ttft_ms"]["p50"], r["ttft_ms"]["p50"]),
                    "tpot_p50": div(b["tpot_ms"]["p50"], r["tpot_ms"]["p50"]),
                    "output_throughput": div(b["output_throughput"], r["output_throughput"])})
    return out


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['target']}\nc={r['max_concurrency'] or '∞'}"
              + (f" r={r['request_rate']:g}" if math.isfinite(r["request_rate"]) else "") for r in runs]
    fig, axes = plt.subplots(2, 2, figsize=(max(8, 1.6 * len(runs) + 4), 8))
    x = list(range(len(runs)))
    width = 0.27
    for ax, key, title in ((axes[0][0], "ttft_ms", "TTFT (ms)"), (axes[0][1], "tpot_ms", "TPOT (ms)"),
                           (axes[1][0], "e2el_ms", "End-to-end latency (ms)")):
        for j, p in enumerate(("p50", "p90", "p99")):
            ax.bar([i + (j - 1) * width for i in x], [r[key][p] for r in runs], width, label=p)
        ax.set_title(title)
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.bar(x, [r["output_throughput"] for r in runs], 0.6, label="output tok/s")
    ax.set_title("Output throughput (tokens/s)")
    ax.set_xticks(x, labels, fontsize=8)
    fig.suptitle(f"octavo bench serve: {runs[0]['input_len']} in / {runs[0]['output_len']} out, "
                 f"{runs[0]['num_prompts']} prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- command


def _model_of(base_url: str, headers: dict) -> str:
    import urllib.request

    req = urllib.request.Request(base_url.rstrip("/") + "/v1/models", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"][0]["id"]


def run_bench(args: argparse.Namespace) -> int:
    targets = []
    for t in args.target or []:
        name, sep, url = t.partition("=")
        if not sep:
            raise SystemExit(f"--target must be NAME=URL, got {t!r}")
        targets.append((name, url.rstrip("/")))
    if not targets:
        targets = [(args.label, args.base_url.rstrip("/"))]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    random_ids = not args.prompts_file and not args.endpoint.endswith("chat/completions")
    pool = token_pool(targets[0][1], headers, args.tokenizer) if random_ids else []
    prompts = make_prompts(args, pool)
    concurrencies = args.max_concurrency or [None]
    runs = []
    for name, url in targets:
        model = args.model or _model_of(url, headers)
        for conc in concurrencies:
            print(f"== {name} {url}{args.endpoint} model={model} concurrency={conc or 'unbounded'} "
                  f"rate={args.request_rate}", file=sys.stderr, flush=True)
            results, duration = asyncio.run(run_load(url + args.endpoint, model, prompts, args, headers, conc,
                                                     args.request_rate))
            run = {"target": name, "base_url": url, "model": model, "endpoint": args.endpoint,
                   "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                   "max_concurrency": conc, "request_rate": args.request_rate, **summarize(results, duration)}
            runs.append(run)
            print(format_run(run), file=sys.stderr, flush=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "runs": runs, "ratios": ratios(runs)}
    text = json.dumps(_finite(result), indent=2)
    if args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.plot:
        plot(runs, args.plot)
    return 0 if all(r["failed"] == 0 for r in runs) else 1


def _finite(obj):
    """Non-finite floats (an unlimited request rate) as null: strict JSON has no Infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def format_run(r: dict) -> str:
    return (f"  completed {r['completed']}, failed {r['failed']} in {r['duration_s']:.2f}s | "
            f"{r['request_throughput']:.2f} req/s, {r['output_throughput']:.1f} out tok/s | "
            f"TTFT p50 {r['ttft_ms']['p50']:.1f} p99 {r['ttft_ms']['p99']:.1f} ms | "
            f"TPOT p50 {r['tpot_ms']['p50']:.2f} p99 {r['tpot_ms']['p99']:.2f} ms | "
            f"ITL p50 {r['itl_ms']['p50']:.2f} ms | e2e p50 {r['e2el_ms']['p50']:.0f} p99 {r['e2el_ms']['p99']:.0f} ms"
            + (f" | errors: {r['errors']}" if r["errors"] else ""))


def add_bench_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="load-test an OpenAI-compatible server",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server to test")
    p.add_argument("--target", action="append", metavar="NAME=URL",
                   help="a server to test (repeat to compare servers in one run; overrides --base-url)")
    p.add_argument("--label", default="server", help="name of the --base-url run in the results")
    p.add_argument("--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions"])
    p.add_argument("--model", default=None, help="model name (default: the first of /v1/models)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir for random prompt ids (default: ask /tokenize)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--prompts-file", default=None,
                   help="given prompts (JSON Lines with 'prompt', or one per line) instead of random ones")
    p.add_argument("--input-len", "--random-input-len", dest="input_len", type=int, default=128)
    p.add_argument("--output-len", "--random-output-len", dest="output_len", type=int, default=128)
    p.add_argument("--range-ratio", "--random-range-ratio", dest="range_ratio", type=float, default=0.0,
                   help="lengths drawn from [len * (1 - ratio), len]")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals (1: Poisson)")
    p.add_argument("--max-concurrency", type=int, nargs="+", default=None,
                   help="at most this many requests in flight; several values run one after the other")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly the output length (default: on)")
    p.add_argument("--num-warmups", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-file", default=None, help="write the JSON result here (default: stdout)")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.set_defaults(fn=run_bench)
    return p
