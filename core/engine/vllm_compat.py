"""`vllm serve` / `vllm bench` flags that mean nothing here: accepted, so a vLLM command line
runs unchanged, with a warning that says why each has no effect."""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("octavo")

# (flags, argparse keywords, why it has no effect here)
_NO_EFFECT: list[tuple[tuple[str, ...], dict, str]] = [
    (("--trust-remote-code",), {"action": "store_true"},
     "no remote code is ever run: models load from config.json + safetensors or GGUF"),
    (("--disable-frontend-multiprocessing",), {"action": "store_true"},
     "the HTTP server and the engine share one process"),
    (("--swap-space",), {"type": float}, "preempted requests are recomputed, never swapped"),
    (("--download-dir",), {}, "models are local paths: nothing is downloaded"),
    (("--load-format",), {}, "safetensors and GGUF are recognised by the files"),
    (("--revision", "--tokenizer-revision", "--code-revision"), {}, "models are local paths: no hub revisions"),
    (("--tokenizer-mode",), {}, "the tokenizer is always the model's own (fast where it has one)"),
    (("--max-seq-len-to-capture",), {"type": int}, "graph capture sizes are the device backend's own option"),
    (("--disable-custom-all-reduce",), {"action": "store_true"},
     "tensor-parallel ranks all-reduce through the backend's communicator (torch.distributed)"),
    (("--enable-prompt-tokens-details",), {"action": "store_true"},
     "usage always reports prompt_tokens_details.cached_tokens"),
    (("--max-log-len",), {"type": int}, "the request log line holds no prompt text"),
    (("--num-scheduler-steps",), {"type": int}, "the scheduler runs one step at a time"),
    (("--async-scheduling",), {"action": "store_true"}, "the grammar fill already overlaps the forward pass"),
    (("--compilation-config", "-O"), {}, "device graphs are each backend's own (see the backend's options)"),
    (("--enable-sleep-mode",), {"action": "store_true"}, "no sleep mode"),
]


def _dest(flags: tuple[str, ...]) -> str:
    return "vllm_" + flags[0].lstrip("-").replace("-", "_")


def add_vllm_compat_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("vLLM compatibility", "accepted so that vLLM command lines run; no effect here")
    for flags, kwargs, why in _NO_EFFECT:
        if kwargs.get("action") == "store_true":
            g.add_argument(*flags, dest=_dest(flags), default=False, help=f"no effect: {why}", **kwargs)
        else:
            g.add_argument(*flags, dest=_dest(flags), default=None, metavar="VALUE", help=f"no effect: {why}",
                           **kwargs)


def warn_vllm_compat(args: argparse.Namespace) -> None:
    """Warn for each given no-effect flag."""
    for flags, _, why in _NO_EFFECT:
        value = getattr(args, _dest(flags), None)
        if value in (None, False):
            continue
        logger.warning("%s is accepted for vLLM compatibility and has no effect: %s", flags[0], why)
