"""Octavo: a device-neutral LLM inference engine."""
from octavo.pooling_params import PoolingParams
from octavo.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "PoolingParams", "PoolerConfig", "RequestOutputKind", "StructuredOutputParams",
           "__version__"]


def __getattr__(name: str):
    # LLM pulls in the engine and models; keep `import octavo` light for the CLI and backends.
    if name == "LLM":
        from octavo.entrypoints.llm import LLM

        return LLM
    if name == "PoolerConfig":
        from octavo.config import PoolerConfig

        return PoolerConfig
    if name == "StructuredOutputParams":
        from octavo.structured_output import StructuredOutputParams

        return StructuredOutputParams
    raise AttributeError(name)
