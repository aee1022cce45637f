"""Which requests NxDI's on-device sampler can serve, and its per-row parameters.

The device sampler (compiled into the model with `OnDeviceSamplingConfig(dynamic=True)`)
draws from the top `global_topk` logits with per-row top-k, top-p and temperature, from the
device's own random stream. Anything else a request asks of sampling (a seed, min-p,
penalties, logit bias, allowed tokens, min_tokens, logprobs, a grammar, or top-k off, which
would mean the whole vocabulary) needs the logits on the host and the core's sampler.
"""
from __future__ import annotations

import torch

from octavo.backend import SamplingParams

GLOBAL_TOPK = 256  # NxDI's default global_topk: the device sampler's candidate pool


def device_can_sample(params: SamplingParams, num_output_tokens: int) -> bool:
    """Whether the device sampler gives this request's next token as the core's would (in
    distribution; a greedy token exactly)."""
    host_only = (params.logprobs is not None or bool(params.logit_bias) or params.allowed_token_ids is not None
                 or params.repetition_penalty != 1.0 or params.presence_penalty != 0.0
                 or params.frequency_penalty != 0.0 or num_output_tokens < params.min_tokens
                 or params.structured_outputs is not None)
    if host_only:
        return False
    return params.greedy or (0 < params.top_k <= GLOBAL_TOPK and params.seed is None and params.min_p == 0.0)


def device_row(params: SamplingParams) -> tuple[float, float, float]:
    """(top_k, top_p, temperature) for NxDI's `prepare_sampling_params`; greedy is top-k 1."""
    if params.greedy:
        return 1.0, 1.0, 1.0
    return float(params.top_k), params.top_p, params.temperature
