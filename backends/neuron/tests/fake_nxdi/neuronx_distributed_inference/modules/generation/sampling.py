"""prepare_sampling_params and the on-device sampler's math (top-k within global_topk,
temperature, top-p, one multinomial draw), as NxDI documents them."""
from __future__ import annotations

import torch


def prepare_sampling_params(batch_size, top_k=[1], top_p=[1.0], temperature=[1.0]):  # noqa: B006 (NxDI's signature)
    """[batch_size, 3] rows of (top_k, top_p, temperature); length-1 lists broadcast."""
    columns = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (top_k, top_p, temperature)]
    if len({c.shape[0] for c in columns}) != 1:
        raise AssertionError("sampling params shapes don't match")
    if columns[0].shape[0] == 1:
        columns = [c.expand(batch_size) for c in columns]
    return torch.stack(columns, dim=1)


def validate_sampling_params(params: torch.Tensor, global_topk: int) -> None:
    if params.dim() != 2 or params.shape[1] != 3:
        raise ValueError(f"Expected tensor of shape (batch_size, 3), but got {tuple(params.shape)}")
    top_k, top_p, temperature = params[:, 0], params[:, 1], params[:, 2]
    if not torch.all((top_k == -1) | ((top_k >= 0) & (top_k <= global_topk))):
        raise ValueError(f"Invalid top-k values found. top-k must be -1 or in [0, {global_topk=}]. Found {top_k=}.")
    if not torch.all((top_p > 0.0) & (top_p <= 1.0)):
        raise ValueError(f"Invalid top-p values found. top-p must be in the range (0.0, 1.0]. Found {top_p=}.")
    if not torch.all(temperature >= 0.0):
        raise ValueError(f"Invalid temperature values found. Found {temperature=}.")


def sample(logits: torch.Tensor, params: torch.Tensor, global_topk: int) -> torch.Tensor:
    """One token per row of logits [B, V] (int32 [B]). temperature 0 or top_k 1 is greedy."""
    tokens = logits.argmax(dim=-1)
    for row in range(logits.shape[0]):
        top_k, top_p, temperature = params[row].tolist()
        if temperature == 0.0 or top_k == 1:
            continue
        values, indices = logits[row].float().topk(min(global_topk, logits.shape[-1]))
        if top_k > 0:
            values[int(top_k):] = float("-inf")
        probs = (values / temperature).softmax(dim=-1)
        cut = probs.cumsum(dim=-1) > top_p
        cut[0] = False  # keep at least one token
        probs = probs.masked_fill(cut, 0.0)
        tokens[row] = indices[torch.multinomial(probs / probs.sum(), 1)]
    return tokens.to(torch.int32)
