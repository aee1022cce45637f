"""Octavo against llama.cpp on the same GGUF files, one engine at a time.

Per file, prints and records one JSON object:
- batch-1 decode tok/s: `llama-bench -p 128 -n 128` (tg128) against `octavo bench latency
  --input-len 128 --output-len 128` (decode tokens/s after the first), and the ratio;
- perplexity on a fixed text: `llama-perplexity -c CTX` against Octavo computing the same
  numbers (llama.cpp's chunking: chunks of CTX tokens, the first token of each replaced by
  BOS where the model adds one, only the second half of each chunk scored), on llama.cpp's
  own tokens of the text;
- argmax agreement: llama-server generates --agree-tokens greedy tokens from a prompt;
  Octavo reads prompt + those tokens and its top-1 is compared at every generated position
  (teacher forcing, so one disagreement does not derail the rest).

    python bench/gguf_vs_llamacpp.py --llama-bin /opt/peers/llama.cpp-build/bin \\
        --model A.gguf --model B.gguf --output bench/results/gguf-vs-llamacpp-DATE.json

llama.cpp is a peer built outside the project (shared/PEERS.md); nothing here installs it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request

from octavo import LLM, SamplingParams

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"  # a fixed English text on every Debian machine


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def machine() -> dict:
    flags = open("/proc/cpuinfo").read()
    return {"cpu": re.search(r"model name\s*: (.*)", flags)[1], "amx": "amx_tile" in flags,
            "avx512_fp16": "avx512_fp16" in flags, "loadavg_1m": os.getloadavg()[0], "host": platform.node()}


def llama_bench(bin_dir: str, model: str, threads: int) -> dict:
    out = subprocess.run([f"{bin_dir}/llama-bench", "-m", model, "-p", "128", "-n", "128", "-t", str(threads),
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    speed = {("pp128" if r["n_prompt"] else "tg128"): r["avg_ts"] for r in rows}
    return speed


def octavo_latency(model: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "octavo.cli", "bench", "latency", "--model", model, "--input-len", "128",
                          "--output-len", "128", "--num-threads", str(threads), "--max-model-len", "1024"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_perplexity(bin_dir: str, model: str, text: str, ctx: int, threads: int) -> float:
    out = subprocess.run([f"{bin_dir}/llama-perplexity", "-m", model, "-f", text, "-c", str(ctx), "-b", str(ctx),
                          "-t", str(threads)], check=True, capture_output=True, text=True)
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)[1])


class LlamaServer:
    """llama-server on loopback for its tokenizer and greedy generations."""

    def __init__(self, bin_dir: str, model: str, threads: int, port: int = 8092):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([f"{bin_dir}/llama-server", "-m", model, "--host", "127.0.0.1", "--port",
                                      str(port), "-t", str(threads), "-c", "4096", "--no-webui"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                time.sleep(1)
        self.close()
        raise RuntimeError("llama-server did not start")

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def octavo_perplexity(llm: LLM, tokens: list[int], ctx: int, bos: int | None) -> float:
    """llama-perplexity's numbers: per chunk of ctx tokens (first replaced by BOS if any),
    the logprobs of tokens ctx/2 + 1 .. ctx - 1 given those before."""
    nll, count = 0.0, 0
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    chunks = [tokens[i * ctx:(i + 1) * ctx] for i in range(len(tokens) // ctx)]
    chunks = [([bos] + c[1:]) if bos is not None else c for c in chunks]
    for out, chunk in zip(llm.generate(prompt_token_ids=chunks, sampling_params=params), chunks):
        for j in range(ctx // 2, ctx - 1):
            nll -= out.prompt_logprobs[j + 1][chunk[j + 1]].logprob
            count += 1
    return math.exp(nll / count)


def argmax_agreement(llm: LLM, prompt: list[int], generated: list[int]) -> float:
    out = llm.generate(prompt_token_ids=[prompt + generated],
                       sampling_params=SamplingParams(max_tokens=1, prompt_logprobs=1))[0]
    ranks = [out.prompt_logprobs[len(prompt) + i][token].rank for i, token in enumerate(generated)]
    return sum(rank == 1 for rank in ranks) / len(ranks)


def measure(args, model: str) -> dict:
    row = {"model": os.path.basename(model), **machine()}
    log(f"== {model}: llama-bench")
    row["llama_cpp"] = llama_bench(args.llama_bin, model, args.threads)
    log("   octavo bench latency")
    row["octavo"] = octavo_latency(model, args.threads)
    row["decode_ratio"] = row["octavo"]["decode_tokens_per_s_median"] / row["llama_cpp"]["tg128"]
    log("   llama-perplexity")
    row["llama_cpp"]["perplexity"] = llama_perplexity(args.llama_bin, model, args.text, args.ctx, args.threads)
    server = LlamaServer(args.llama_bin, model, args.threads)
    try:
        text = open(args.text).read()
        tokens = server.post("/tokenize", {"content": text, "add_special": False})["tokens"]
        prompt = server.post("/tokenize", {"content": args.prompt, "add_special": True})["tokens"]
        gen = server.post("/completion", {"prompt": prompt, "n_predict": args.agree_tokens, "temperature": 0,
                                          "top_k": 1, "ignore_eos": True, "return_tokens": True, "cache_prompt": False})
    finally:
        server.close()
    log("   octavo perplexity and agreement")
    llm = LLM(model, max_model_len=4096, num_threads=args.threads)
    bos = llm.get_tokenizer().bos_token_id if _adds_bos(model) else None
    row["octavo"]["perplexity"] = octavo_perplexity(llm, tokens, args.ctx, bos)
    row["perplexity_ratio"] = row["octavo"]["perplexity"] / row["llama_cpp"]["perplexity"]
    row["argmax_agreement"] = argmax_agreement(llm, prompt, gen["tokens"])
    row["agree_tokens"] = len(gen["tokens"])
    row["loadavg_1m_after"] = os.getloadavg()[0]
    return row


def _adds_bos(model: str) -> bool:
    from gguf import GGUFReader

    field = GGUFReader(model).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--llama-bin", required=True, help="folder with llama-bench, llama-perplexity, llama-server")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--agree-tokens", type=int, default=512)
    p.add_argument("--prompt", default="Write a short story about a lighthouse keeper and a storm at sea.")
    p.add_argument("--output")
    args = p.parse_args()
    rows = [measure(args, model) for model in args.model]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
