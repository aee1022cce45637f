"""The pooling runner's device-side step: one hidden state per request whose prompt ended."""
from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, query_start_loc: torch.Tensor, rows: list[int], pooling_type: str) -> torch.Tensor:
    """[len(rows), hidden] float32 on `hidden`'s device: for each request of the step at `rows`,
    its last token's hidden state (LAST) or the mean over its tokens in this step (MEAN: the
    engine then schedules whole prompts). Vectorised: no Python per token."""
    ends = query_start_loc[1:][rows].long()
    if pooling_type == "LAST":
        return hidden[(ends - 1).to(hidden.device)].float()
    starts = query_start_loc[:-1][rows].long()
    lengths = ends - starts
    owner = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    tokens = torch.arange(int(lengths.sum())) + torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths)
    sums = torch.zeros(len(rows), hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, owner.to(hidden.device), hidden[tokens.to(hidden.device)].float())
    return sums / lengths.to(hidden.device, torch.float32)[:, None]
