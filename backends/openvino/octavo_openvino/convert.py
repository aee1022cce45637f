"""Checkpoint -> OpenVINO model, cached on disk; then compiled for the CPU plugin.

The converted model (weights in their stored precision, compressed by NNCF when asked) is
saved under `cache_dir/<key>/`, the key hashing the checkpoint's bytes, the conversion
options and the OpenVINO (and NNCF) versions. A second start with the same model and
options reads it and converts nothing.

What is saved is the graph's body, without the paged-attention nodes: OpenVINO 2026.4 can
neither read an IR holding `PagedAttentionExtension` nor import a compiled blob of one (the
CPU plugin needs the nodes' runtime info, which neither format keeps), so each start joins
the body through paged attention (`graph.stitch`) and compiles it, a few seconds.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass

import openvino as ov
import torch
from tqdm.auto import tqdm

from octavo.backend import (EngineConfig, ModelConfig, iter_model_weights, load_hf_config, model_config_for,
                            resolve_model_path)
from octavo_openvino.graph import GraphBuilder, ModelSpec, stitch

logger = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the graph changes, so old cached models are not reused
MODEL_XML = "model.xml"


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """Everything the converted model's bytes depend on."""

    weight_type: str  # "f32" or "bf16": how uncompressed matrices are stored
    weight_format: str  # "none", "int8" or "int4" (NNCF weight-only compression)
    group_size: int  # int4 group size


def checkpoint_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    return [os.path.join(path, "config.json"), *files]


def cache_key(path: str, options: ConvertOptions) -> str:
    digest = hashlib.sha256()
    for file in checkpoint_files(path):
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    versions = {"graph": GRAPH_VERSION, "openvino": ov.get_version()}
    if options.weight_format != "none":
        import nncf

        versions["nncf"] = nncf.__version__
    digest.update(json.dumps([asdict(options), versions], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def convert(spec: ModelSpec, weights: dict[str, torch.Tensor], options: ConvertOptions) -> ov.Model:
    weight_type = ov.Type.bf16 if options.weight_type == "bf16" and options.weight_format == "none" else ov.Type.f32
    with tqdm(total=spec.num_layers, desc="converting to OpenVINO", unit="layer", leave=False) as bar:
        model = GraphBuilder(spec, weights, weight_type).build(progress=lambda: bar.update())
    if options.weight_format != "none":
        import nncf

        mode = {"int8": nncf.CompressWeightsMode.INT8_ASYM, "int4": nncf.CompressWeightsMode.INT4_ASYM}
        kwargs = {"group_size": options.group_size, "ratio": 1.0} if options.weight_format == "int4" else {}
        model = nncf.compress_weights(model, mode=mode[options.weight_format], **kwargs)
    return model


def load_or_convert(path: str, cache_dir: str, options: ConvertOptions, spec: ModelSpec,
                    weights) -> tuple[str, bool]:
    """The cached model's xml path, converting first if absent; and whether it converted.

    `weights()` yields the checkpoint's HF-named tensors; it is called only on a miss.
    """
    folder = os.path.join(cache_dir, cache_key(path, options))
    xml = os.path.join(folder, MODEL_XML)
    if os.path.isfile(xml):
        logger.info("OpenVINO model from the cache: %s", folder)
        return xml, False
    start = time.perf_counter()
    model = convert(spec, dict(weights()), options)
    tmp = f"{folder}.{os.getpid()}.tmp"
    ov.save_model(model, os.path.join(tmp, MODEL_XML), compress_to_fp16=False)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    logger.info("converted %s to OpenVINO in %.1f s: %s", path, time.perf_counter() - start, folder)
    return xml, True


def compile_model(xml: str, spec: ModelSpec, properties: dict) -> ov.CompiledModel:
    core = ov.Core()
    with tqdm(total=1, desc="compiling for the OpenVINO CPU plugin", leave=False) as bar:
        compiled = core.compile_model(stitch(core.read_model(xml), spec), "CPU", properties)
        bar.update()
    return compiled


def default_cache_dir() -> str:
    root = os.environ.get("OCTAVO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "octavo")
    return os.path.join(root, "openvino")


def compile_properties(config: EngineConfig, options) -> dict:
    precision = "f32" if config.dtype == torch.float32 else "bf16"
    props = {
        "INFERENCE_PRECISION_HINT": precision,
        "KV_CACHE_PRECISION": precision if config.kv_cache_dtype == "auto" else config.kv_cache_dtype,
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time: every core on it
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": options.dynamic_quantization_group_size,
    }
    if options.inference_num_threads:
        props["INFERENCE_NUM_THREADS"] = options.inference_num_threads
    return props


def load_compiled(config: EngineConfig, options) -> tuple[ModelConfig, ov.CompiledModel, bool]:
    """The engine's model on the CPU plugin: its shapes, the compiled model, and whether this
    start had to convert the checkpoint (False: it came from the disk cache)."""
    path = resolve_model_path(config.model)
    hf_config = load_hf_config(path)
    model_config = model_config_for(config, hf_config)
    spec = ModelSpec.from_hf(model_config.architecture, hf_config)
    convert_options = ConvertOptions(
        weight_type="f32" if config.dtype == torch.float32 else "bf16",
        weight_format=options.quantization,
        group_size=options.int4_group_size)
    xml, converted = load_or_convert(path, options.model_cache_dir or default_cache_dir(), convert_options, spec,
                                     lambda: iter_model_weights(path, hf_config, torch.float32))
    return model_config, compile_model(xml, spec, compile_properties(config, options)), converted
