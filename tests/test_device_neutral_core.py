"""core/ and server/ never reach a device runtime: that is the backends' business."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNTIMES = {"triton", "torch_xla", "openvino", "intel_extension_for_pytorch", "torch_neuronx",
            "neuronx_distributed", "transformers_neuronx", "neuronxcc", "jax"}
DEVICE_NAMESPACES = {("torch", "cuda"), ("torch", "xpu"), ("torch", "mps"), ("torch", "npu")}


def device_runtime_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in RUNTIMES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in RUNTIMES or tuple(node.module.split(".")[:2]) in DEVICE_NAMESPACES:
                found.append(node.module)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in DEVICE_NAMESPACES:
                found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_checker_catches_what_it_should():
    assert device_runtime_uses("import triton") == ["triton"]
    assert device_runtime_uses("from torch_xla.core import xla_model") == ["torch_xla.core"]
    assert device_runtime_uses("import torch\ntorch.cuda.synchronize()") == ["torch.cuda"]
    assert device_runtime_uses("from torch.cuda import graphs") == ["torch.cuda"]
    assert device_runtime_uses("import torch\nx = torch.device('cpu')") == []


@pytest.mark.parametrize("folder", ["core", "server"])
def test_no_device_runtime_in(folder):
    offenders = {str(p.relative_to(ROOT)): uses for p in sorted((ROOT / folder).rglob("*.py"))
                 if (uses := device_runtime_uses(p.read_text()))}
    assert not offenders, f"device runtimes belong behind the backend contract: {offenders}"
