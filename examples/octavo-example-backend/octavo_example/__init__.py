"""An Octavo backend that lives outside Octavo's repository: the route a hardware vendor takes.

It registers the device `example` under the entry-point group `octavo.backends` (see
pyproject.toml) and uses nothing from Octavo but the contract module `octavo.backend`. The
model runs as the core's torch modules on the CPU (`TorchWorker`); what a device package
brings is its attention over the paged KV cache (`attention.ExampleAttention`, written for
clarity, not speed), its KV-cache sizing and its options.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.backend import (Availability, Backend, BackendOptions, ConfigError, EngineConfig, TorchWorker,
                            option)

__version__ = "0.1.0"


@dataclass
class ExampleOptions(BackendOptions):
    # Flags share one command line with every installed backend: name them after the device
    # unless they mean exactly what another backend's option of that name means.
    example_kv_blocks: int = option(1024, "KV blocks when --num-kv-blocks and --kv-cache-memory are not given")

    def validate(self, config: EngineConfig) -> None:
        if self.example_kv_blocks < 1:
            raise ConfigError(f"--example-kv-blocks must be at least 1, got {self.example_kv_blocks}")


class ExampleWorker(TorchWorker):
    def num_kv_blocks(self, block_size: int) -> int:
        if self.config.kv_cache_memory is not None:
            return max(1, self.config.kv_cache_memory // self.kv_bytes_per_block(block_size))
        return self.backend.options.example_kv_blocks


class ExampleBackend(Backend):
    name = "example"
    contract_version = "4.0"
    priority = -10  # `--device auto` prefers any real device
    options_class = ExampleOptions
    supported_dtypes = (torch.float32, torch.bfloat16)
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                     "Gemma3ForCausalLM")

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def create_worker(self, config: EngineConfig) -> ExampleWorker:
        from octavo_example.attention import ExampleAttention

        return ExampleWorker(config, self, torch.device("cpu"), ExampleAttention())


__all__ = ["ExampleBackend", "ExampleOptions", "__version__"]
