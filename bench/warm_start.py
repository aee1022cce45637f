"""Time from `octavo serve ...` to the first served token, on a warm machine (the model's
caches built by an earlier start): the process starts, /v1/models is polled, and a
one-token completion is asked for as soon as the server answers.

    python bench/warm_start.py                      # the embedded default model
    python bench/warm_start.py --model FILE.gguf    # arguments go to `octavo serve`
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

PORT = 8123


def first_served_token(serve_args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(["octavo", "serve", *serve_args, "--port", str(PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{PORT}/v1"
    try:
        while True:
            try:
                model = json.load(urllib.request.urlopen(f"{url}/models", timeout=1))["data"][0]["id"]
                body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 1}).encode()
                request = urllib.request.Request(f"{url}/completions", body, {"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=30).read()
                return time.perf_counter() - start
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"octavo serve exited with {proc.returncode}")
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    first_served_token(sys.argv[1:])  # warms the caches
    print(json.dumps({"serve_args": sys.argv[1:], "first_served_token_s": [
        round(first_served_token(sys.argv[1:]), 2) for _ in range(3)]}))
