"""Availability, options and selection of the TPU backend (no TPU here: XLA's CPU client)."""
import os
import subprocess
import sys

import pytest
import torch

from octavo.backend import ConfigError, EngineConfig
from octavo.testing import checks
from octavo.testing.tiny_models import make_tiny_model
from octavo_tpu import TpuBackend, TpuOptions


@pytest.mark.parametrize("pjrt,ok,words", [(None, False, "no TPU found"), ("CPU", True, "testing mode"),
                                           ("CUDA", False, "PJRT_DEVICE=CUDA")])
def test_availability(monkeypatch, pjrt, ok, words):
    if pjrt is None:
        monkeypatch.delenv("PJRT_DEVICE", raising=False)
    else:
        monkeypatch.setenv("PJRT_DEVICE", pjrt)
    availability = TpuBackend.availability()
    assert availability.ok is ok and words in availability.reason
    assert not (availability.ok and availability.auto), "the testing mode is chosen by name only"


def test_octavo_devices_says_there_is_no_tpu_every_time():
    """Importing torch-xla (to count TPU chips) picks PJRT_DEVICE=CPU for the process; the
    check undoes it, so a second check, here `octavo devices` after a first, still finds no
    TPU rather than the testing mode."""
    env = {k: v for k, v in os.environ.items() if k != "PJRT_DEVICE"}
    code = ("import sys; from octavo_tpu import TpuBackend; from octavo.cli import main; "
            "assert not TpuBackend.availability().ok; sys.exit(main(['devices']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.split()[:1] == ["tpu"])
    assert "no TPU found" in line, out.stdout


@pytest.mark.parametrize("field,value", [("min_num_tokens", 0), ("min_num_reqs", -1),
                                         ("hbm_memory_utilization", 1.5)])
def test_bad_options_name_themselves(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
        TpuOptions(**{field: value}).validate(EngineConfig())


def test_selected_by_name_in_fp32_on_the_cpu_client_and_bf16_close_to_hf(tmp_path):
    """`device="tpu"` finds the installed backend; fp32 is the CPU client's default, and bf16
    (a TPU's default) stays within bf16's rounding of HF's fp32 choices."""
    from octavo import LLM

    assert TpuBackend().default_dtype() == torch.float32

    def make_llm(path, **kwargs):  # small limits: 9 graphs
        return LLM(path, device="tpu", max_num_seqs=8, max_num_batched_tokens=32, **kwargs)

    checks.check_half_precision_close_to_hf(make_llm, make_tiny_model("llama", str(tmp_path)), "bfloat16")
