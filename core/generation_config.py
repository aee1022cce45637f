"""Sampling defaults from the model, as vLLM's `--generation-config auto`: the values a model's
`generation_config.json` (or its GGUF `general.sampling.*` metadata) sets for temperature,
top_p, top_k, min_p, repetition_penalty and max_new_tokens fill the fields a request leaves
unset. `vllm` (or `none`) ignores them; a directory reads its generation_config.json instead."""
from __future__ import annotations

import json
import os

from octavo.config import ConfigError

# generation_config.json key -> the sampling field it defaults.
_HF_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
# GGUF metadata (llama.cpp's general.sampling.*) -> the sampling field.
_GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
              "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
              "general.sampling.penalty_repeat": "repetition_penalty"}
MODES = ("auto", "vllm", "none")


def generation_defaults(model_path: str, mode: str = "auto", overrides: dict | None = None) -> dict:
    """The default sampling fields for requests to this model (sampling field -> value)."""
    if mode in ("vllm", "none"):
        defaults = {}
    elif mode == "auto":
        defaults = _from_model(model_path)
    elif os.path.isdir(mode):
        defaults = _from_json(os.path.join(mode, "generation_config.json"))
    else:
        raise ConfigError(f"--generation-config must be auto, vllm or a directory holding "
                          f"generation_config.json, got {mode!r}")
    for key, value in (overrides or {}).items():
        field = _HF_KEYS.get(key, key)
        if field not in _HF_KEYS.values():
            raise ConfigError(f"--override-generation-config: unknown key {key!r}; known: {', '.join(_HF_KEYS)}")
        defaults[field] = value
    return defaults


def _from_model(path: str) -> dict:
    from octavo.loader import gguf

    if gguf.is_gguf(path):
        return _from_gguf(path)
    return _from_json(os.path.join(path, "generation_config.json")) if os.path.isdir(path) else {}


def _from_json(file: str) -> dict:
    if not os.path.isfile(file):
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from None
    if values.get("do_sample") is False:  # a greedy model: HF ignores its sampling values
        return {"temperature": 0.0, **({"max_tokens": values["max_new_tokens"]} if "max_new_tokens" in values else {})}
    return {field: values[key] for key, field in _HF_KEYS.items() if values.get(key) is not None}


def _from_gguf(path: str) -> dict:
    from octavo.loader.gguf import GgufIndex

    values = GgufIndex.load(path).sampling  # parsed with the tensors, once per file
    return {field: int(values[key]) if field == "top_k" else float(values[key])
            for key, field in _GGUF_KEYS.items() if key in values}
