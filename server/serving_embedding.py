"""POST /v1/embeddings: texts or token ids -> one embedding each, from the pooling runner.

Each input is an engine request of its own (`AsyncLLM.encode`), batched with the others by
the scheduler; if one fails, the rest are aborted and the request answers the error.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time

import torch
from fastapi import Request

from octavo.outputs import PoolingRequestOutput
from octavo.pooling_params import PoolingParams
from octavo.server import sampling
from octavo.server.errors import bad_request
from octavo.server.metrics import ServerMetrics
from octavo.server.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from octavo.server.serving_common import check_token_ids, encode, prompt_items, warn_unknown_fields
from octavo.server.state import ServerState
from octavo.server.tracking import unless_disconnected

logger = logging.getLogger("octavo.server")

ENDPOINT = "/v1/embeddings"
MAX_INPUTS = 2048  # inputs in one request: OpenAI's limit


def _tokenize(state: ServerState, req: EmbeddingRequest, items: list[str | list[int]]) -> list[list[int]]:
    """Each input's token ids, checked and truncated (slow: run it with `state.run_blocking`)."""
    out = []
    for item in items:
        if item == "":
            raise bad_request("input must not hold an empty string", "input")
        ids = encode(state.tokenizer, item, req.add_special_tokens is not False, "input") if isinstance(item, str) \
            else item
        check_token_ids(ids, state.vocab_size, "input")
        ids = sampling.truncate(ids, req.truncate_prompt_tokens, state.max_model_len)
        if len(ids) > state.max_model_len:
            raise bad_request(f"This model's maximum context length is {state.max_model_len} tokens. However, you "
                              f"requested {len(ids)} tokens in the input for embedding generation. Please reduce "
                              "the length of the input.", "input", "context_length_exceeded")
        out.append(ids)
    return out


async def _embed(engine, metrics: ServerMetrics, ids: list[int], params: PoolingParams,
                 request_id: str) -> PoolingRequestOutput:
    async for out in engine.encode({"prompt_token_ids": ids}, params, request_id):
        final = out  # counted on the engine that served it (its route lasts while the output is read)
        metrics.for_engine(engine.replica_of(request_id) or 0).add_prompt_tokens(len(ids))
    return final


async def _embed_all(engine, metrics: ServerMetrics, prompts: list[list[int]], params: PoolingParams,
                     request_id: str) -> list[PoolingRequestOutput]:
    rids = [request_id] if len(prompts) == 1 else [f"{request_id}-{i}" for i in range(len(prompts))]
    tasks = [asyncio.ensure_future(_embed(engine, metrics, ids, params, rid)) for ids, rid in zip(prompts, rids)]
    try:
        return await asyncio.gather(*tasks)
    finally:  # one failed, or the client went away: the others stop too
        for task in tasks:
            task.cancel()


def _encoded(data: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(data.numpy().astype("<f4").tobytes()).decode("ascii")
    return data.tolist()


async def create_embedding(state: ServerState, req: EmbeddingRequest, raw: Request, request_id: str):
    model = state.check_model(req.model)
    state.check_runner("pooling")
    warn_unknown_fields(req, ENDPOINT)
    prompts = await state.run_blocking(_tokenize, state, req, prompt_items(req.input, "input", MAX_INPUTS))
    start = time.monotonic()
    outputs = await unless_disconnected(raw, _embed_all(state.engine, state.metrics, prompts,
                                                        PoolingParams(req.dimensions), request_id))
    num_tokens = sum(map(len, prompts))
    if state.settings.log_requests:
        logger.info("%s %s: inputs=%d prompt_tokens=%d e2e=%.3fs", ENDPOINT, request_id, len(prompts), num_tokens,
                    time.monotonic() - start)
    data = [EmbeddingData.model_construct(index=i, object="embedding",
                                          embedding=_encoded(out.outputs.data, req.encoding_format))
            for i, out in enumerate(outputs)]
    return EmbeddingResponse(id=request_id, model=model, data=data,
                             usage=EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens))
