"""Collect bench/throughput.py JSON lines into one results file and print the comparison table.

    python bench/report.py RUN.jsonl --out bench/results/throughput-DATE.json [--meta k=v ...]

Throughput ratios use each engine's best throughput line (for HF: its best batch size);
batch-1 ratios use the decode tokens/s after the first token.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

ENGINES = ("octavo", "hf", "vllm")


def best(lines, engine, mode, key):
    cands = [r for r in lines if r.get("engine") == engine and r.get("mode") == mode and key in r]
    return max(cands, key=lambda r: r[key]) if cands else None


def ratio(a, b, key):
    if a is None or b is None or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def summarize(lines: list[dict]) -> dict:
    summary = {}
    for e in ENGINES:
        tp = best(lines, e, "throughput", "output_tokens_per_s")
        b1 = best(lines, e, "batch-1", "decode_tokens_per_s")
        if tp or b1:
            summary[e] = {
                "requests_per_s": tp and tp["requests_per_s"],
                "output_tokens_per_s": tp and tp["output_tokens_per_s"],
                "total_tokens_per_s": tp and tp["total_tokens_per_s"],
                "hf_batch_size": tp and tp.get("hf_batch_size"),
                "batch1_decode_tokens_per_s": b1 and b1["decode_tokens_per_s"],
                "batch1_ttft_s": b1 and b1["ttft_s"],
            }
    ratios = {}
    for peer in ("hf", "vllm"):
        o_tp, p_tp = best(lines, "octavo", "throughput", "output_tokens_per_s"), best(lines, peer, "throughput", "output_tokens_per_s")
        o_b1, p_b1 = best(lines, "octavo", "batch-1", "decode_tokens_per_s"), best(lines, peer, "batch-1", "decode_tokens_per_s")
        ratios[f"octavo/{peer}"] = {
            "throughput": ratio(o_tp, p_tp, "output_tokens_per_s"),
            "batch1_decode": ratio(o_b1, p_b1, "decode_tokens_per_s"),
        }
    shas = {r["prompt_sha"] for r in lines if r.get("mode") == "throughput" and "prompt_sha" in r}
    return {"summary": summary, "ratios": ratios,
            "targets": {"octavo/hf throughput": 3.0, "octavo/vllm throughput": 1.0},
            "same_prompts_all_engines": len(shas) <= 1}


def fmt(x, nd=2):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def table(doc: dict) -> str:
    rows = [("engine", "req/s", "out tok/s", "total tok/s", "b1 decode tok/s", "b1 ttft s", "hf bs")]
    for e, s in doc["summary"].items():
        rows.append((e, fmt(s["requests_per_s"], 3), fmt(s["output_tokens_per_s"], 1),
                     fmt(s["total_tokens_per_s"], 1), fmt(s["batch1_decode_tokens_per_s"], 1),
                     fmt(s["batch1_ttft_s"], 3), fmt(s["hf_batch_size"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    out.append("")
    for name, r in doc["ratios"].items():
        target = doc["targets"].get(f"{name} throughput")
        out.append(f"{name}: throughput x{fmt(r['throughput'])}"
                   + (f" (target >= {target:g})" if target else "")
                   + f", batch-1 decode x{fmt(r['batch1_decode'])}")
    if not doc["same_prompts_all_engines"]:
        out.append("WARNING: engines did not all get the same prompts (prompt_sha differs)")
    for f in doc.get("failures", []):
        out.append(f"FAILED: {f}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--meta", action="append", default=[], help="key=value copied into the file")
    args = p.parse_args()
    lines = []
    with open(args.jsonl) as f:
        for ln in f:
            ln = ln.strip()
            if ln.startswith("{"):
                lines.append(json.loads(ln))
    doc = summarize(lines)
    meta = dict(kv.split("=", 1) for kv in args.meta)
    doc["failures"] = [v for k, v in meta.items() if k.startswith("failed_")]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    doc["meta"] = {"host": platform.node(), "cpus": os.cpu_count(), "commit": commit, **meta}
    doc["results"] = lines
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(table(doc))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
