"""Every call octavo-neuron makes into NxD Inference (`neuronx-distributed-inference`), here
and nowhere else, imported on first use.

The names and signatures are AWS's (NxD Inference API reference; vLLM's `vllm-neuron`
plugin makes the same calls): the model class from `utils.constants.MODEL_TYPES`, its
`NeuronConfig` and `InferenceConfig` (`load_pretrained_config` fills in the HF config),
`OnDeviceSamplingConfig`, `compile` / `load` of the application, its `forward` with the
block KV layout's inputs, and `prepare_sampling_params`. The tests' fake of NxDI defines
exactly these; a test checks this module names nothing else.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "neuron_config.json"  # what NxDI's compile writes first into the compiled folder


def sdk_problem() -> str | None:
    """Why NxD Inference cannot be imported (None: it can). PyPI's packages of that name are
    placeholders whose import fails."""
    if importlib.util.find_spec("neuronx_distributed_inference") is None:
        return "the Neuron SDK is not installed (no neuronx_distributed_inference)"
    try:
        importlib.import_module("neuronx_distributed_inference")
    except Exception as exc:  # PyPI's placeholder raises ImportError; a broken install anything
        return f"neuronx_distributed_inference does not import ({exc}): not the SDK from AWS's repository"
    return None


def model_class(model_type: str) -> Any:
    """The NxDI application class for a HF `model_type` (e.g. NeuronLlamaForCausalLM)."""
    from neuronx_distributed_inference.utils.constants import MODEL_TYPES

    try:
        return MODEL_TYPES[model_type]["causal-lm"]
    except KeyError:
        raise ValueError(f"NxD Inference has no causal-lm model for model_type {model_type!r}; it has "
                         f"{sorted(MODEL_TYPES)}") from None


def inference_config(cls: Any, model_path: str, **neuron_config: Any) -> Any:
    """`cls`'s InferenceConfig: the HF config at `model_path` plus a NeuronConfig."""
    from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig
    from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config

    sampling = neuron_config.pop("on_device_sampling_config", None)
    if sampling is not None:
        sampling = OnDeviceSamplingConfig(**sampling)
    nc = cls.get_neuron_config_cls()(on_device_sampling_config=sampling, **neuron_config)
    return cls.get_config_cls()(nc, load_config=load_pretrained_config(model_path))


def compile_or_load(cls: Any, model_path: str, config: Any, cache_root: str) -> Any:
    """The loaded application. Compiled graphs are kept under `cache_root`, one folder per
    configuration (a hash of NxDI's own JSON of it): a later start with the same model and
    settings loads them instead of compiling again."""
    key = hashlib.sha256(config.to_json_string().encode()).hexdigest()[:20]
    folder = os.path.join(os.path.expanduser(cache_root), key)
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f"{key}.", dir=os.path.dirname(folder))
        logger.info("compiling %s for Neuron into %s (minutes on a real device)", cls.__name__, folder)
        cls(model_path, config).compile(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)  # a crash mid-compile never leaves a folder that looks done
    else:
        logger.info("loading compiled %s from %s", cls.__name__, folder)
    model = cls(folder)
    model.load(folder)
    return model


@dataclass(slots=True)
class Output:
    tokens: torch.Tensor | None  # [B] int32, sampled on the device (None without on-device sampling)
    logits: torch.Tensor | None  # [B, V] fp32 of each sequence's last position (None: not returned)


def forward(model: Any, inputs: dict[str, torch.Tensor], rows: list[tuple[float, float, float]]) -> Output:
    """One call of the application's forward: NxDI routes it to context encoding (several
    tokens from position 0) or token generation (one token per sequence)."""
    from neuronx_distributed_inference.modules.generation.sampling import prepare_sampling_params

    top_k, top_p, temperature = (list(column) for column in zip(*rows))
    params = prepare_sampling_params(len(rows), top_k=top_k, top_p=top_p, temperature=temperature)
    out = model(attention_mask=None, sampling_params=params, **inputs)
    on_device = model.neuron_config.on_device_sampling_config is not None
    logits = out.logits[:, -1, :] if out.logits is not None else None
    return Output(tokens=out.tokens if on_device else None, logits=logits)
