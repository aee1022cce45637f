"""Per-request pooling settings, with vLLM's names: what `LLM.embed` and /v1/embeddings ask for."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PoolingParams:
    """None means: as the model's pooler config says (`EngineConfig.pooler_config`)."""

    dimensions: int | None = None  # Matryoshka models: keep the first `dimensions` values, then renormalise
    normalize: bool | None = None  # L2-normalise the embedding
