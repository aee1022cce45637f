"""Octavo backend for AWS Trainium and Inferentia: NxD Inference runs the model.

NxD Inference (`neuronx-distributed-inference`, the Neuron SDK's LLM library) compiles the
model ahead of time into context-encoding and token-generation graphs at fixed bucket sizes
and keeps the KV cache on the device in a block layout that Octavo's block tables and slot
mappings address directly (`worker.NeuronWorker`). The SDK is imported only when a model
loads (`nxdi`), so this package imports anywhere; `NeuronBackend.availability` tells
whether the SDK and a Neuron device are here, and how to install the SDK.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass

import torch

from octavo.backend import Availability, Backend, BackendOptions, ConfigError, EngineConfig, option

__version__ = "0.1.0"

SDK_INSTALL = ("install the Neuron SDK from AWS's repository: pip install --extra-index-url "
               "https://pip.repos.neuron.amazonaws.com neuronx-distributed-inference (Neuron SDK 2.28 or newer; "
               "the driver and runtime are the aws-neuronx-dkms and aws-neuronx-runtime-lib packages of AWS's "
               "apt/yum repository, or use a Neuron Deep Learning AMI)")


@dataclass
class NeuronOptions(BackendOptions):
    tp_degree: int = option(1, "NeuronCores to shard the model over (tensor parallelism)")
    context_encoding_buckets: list[int] | None = option(
        None, "prompt lengths to compile context encoding at (None: powers of two from 128 to max_model_len)")
    prefix_buckets: list[int] | None = option(
        None, "cached-prefix lengths to compile context encoding at (None: the context-encoding buckets)")
    token_generation_buckets: list[int] | None = option(
        None, "context lengths to compile token generation at (None: powers of two from 128 to max_model_len)")
    compiled_model_cache: str = option(
        "~/.cache/octavo/neuron",
        "folder for compiled models, one per model and configuration, reused at the next start")
    on_device_sampling: bool = option(
        True, "sample on the device when a request allows it (greedy; top-k <= 256 with top-p and temperature, "
              "unseeded); other requests get the logits and the host sampler")

    def validate(self, config: EngineConfig) -> None:
        if self.tp_degree < 1:
            raise ConfigError(f"--tp-degree must be at least 1, got {self.tp_degree}")


class NeuronBackend(Backend):
    name = "neuron"
    contract_version = "4.1"
    priority = 90
    options_class = NeuronOptions
    supported_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    default_block_size = 32
    supported_block_sizes = (16, 32, 64, 128)
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
    chunked_prefill = False  # NxD Inference has none since SDK 2.28: a prompt's uncached part runs whole
    prompt_logprobs = False  # context encoding returns the logits of the last position only

    @classmethod
    def availability(cls) -> Availability:
        devices = glob.glob("/dev/neuron[0-9]*")
        from octavo_neuron.nxdi import sdk_problem

        sdk = sdk_problem()
        if not devices:
            where = ("no Neuron device (no /dev/neuron*: not a Trainium/Inferentia instance, or the driver is "
                     "not loaded)")
            return Availability(False, f"{where}; {sdk}: {SDK_INSTALL}" if sdk
                                else f"{where}; the Neuron SDK is installed")
        if sdk:
            return Availability(False, f"{len(devices)} Neuron device(s) found, but {sdk}: {SDK_INSTALL}")
        return Availability(True)

    def create_worker(self, config: EngineConfig):
        from octavo_neuron.worker import NeuronWorker

        return NeuronWorker(config, self)


__all__ = ["NeuronBackend", "NeuronOptions", "__version__"]
