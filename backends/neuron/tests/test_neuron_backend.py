"""NeuronBackend without NxDI: identity, entry point, options, what `octavo devices` says
(SDK and device present or not, and how to install the SDK), `--device neuron` failing at
once here. The availability tests fake only the two probes (/dev/neuron*, the SDK import)."""
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

import octavo_neuron
from octavo.backend import Backend, ConfigError, EngineConfig
from octavo_neuron import NeuronBackend, nxdi


def test_identity():
    assert issubclass(NeuronBackend, Backend) and NeuronBackend.name == "neuron"
    assert set(NeuronBackend.supported_dtypes) == {torch.bfloat16, torch.float16, torch.float32}
    assert NeuronBackend.architectures == ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                           "Qwen3ForCausalLM")


def test_entry_point_registered():
    eps = {ep.name: ep for ep in entry_points(group="octavo.backends")}
    assert "neuron" in eps, f"octavo-neuron not installed (pip install -e backends/neuron); found {sorted(eps)}"
    assert eps["neuron"].load() is NeuronBackend


def test_octavo_devices_says_why_here():
    """This machine has neither a Neuron device nor the SDK (PyPI's packages are placeholders).
    In a fresh interpreter: other test modules here put the fake NxDI on sys.path."""
    out = subprocess.run([sys.executable, "-m", "octavo.cli", "devices"], capture_output=True, text=True,
                         timeout=120).stdout
    line = next(line for line in out.splitlines() if line.startswith("neuron "))
    assert "unusable: no Neuron device" in line and "the Neuron SDK is not installed" in line, out
    assert "pip install --extra-index-url" in line and "neuronx-distributed-inference" in line, line


def probes(monkeypatch, devices: list[str], sdk: str | None):
    monkeypatch.setattr(octavo_neuron.glob, "glob", lambda pattern: devices)
    monkeypatch.setattr(nxdi, "sdk_problem", lambda: sdk)


def test_availability_reasons(monkeypatch):
    probes(monkeypatch, [], "the Neuron SDK is not installed")
    reason = NeuronBackend.availability().reason
    assert reason.startswith("no Neuron device") and "not installed" in reason and "aws-neuronx-dkms" in reason
    probes(monkeypatch, [], None)
    assert NeuronBackend.availability().reason.endswith("the Neuron SDK is installed")
    probes(monkeypatch, ["/dev/neuron0", "/dev/neuron1"], "the Neuron SDK is not installed")
    assert NeuronBackend.availability().reason.startswith("2 Neuron device(s) found, but the Neuron SDK")
    probes(monkeypatch, ["/dev/neuron0"], None)
    assert NeuronBackend.availability().ok


def test_sdk_probe_names_the_placeholder(monkeypatch, tmp_path):
    """PyPI's neuronx-distributed-inference is a placeholder that raises ImportError."""
    pkg = tmp_path / "neuronx_distributed_inference"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('placeholder: install from the Neuron repository')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "neuronx_distributed_inference", raising=False)
    assert "does not import (placeholder" in nxdi.sdk_problem()


def test_config_turns_chunked_prefill_off_and_checks_options():
    config = EngineConfig()
    NeuronBackend().check_and_update_config(config)
    assert not config.enable_chunked_prefill and config.block_size == 32 and config.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="neuron supports block sizes"):
        NeuronBackend().check_and_update_config(EngineConfig(block_size=8))
    with pytest.raises(ConfigError, match="--tp-degree"):
        NeuronBackend(octavo_neuron.NeuronOptions(tp_degree=0)).check_and_update_config(EngineConfig())


def test_device_neuron_fails_at_once_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "octavo.cli", "generate", "hi", "--device", "neuron",
                           "--model", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no Neuron device" in proc.stderr and "extra-index-url" in proc.stderr, proc.stderr[-2000:]
