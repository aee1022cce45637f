"""The OpenVINO backend's own pieces: availability, options, the step inputs built from block
tables, the disk cache of converted models, and bf16 / u8-KV / int8 on tiny models.

The engine-level checks against HF (every family, f32) run through the conformance kit
(CI: `--octavo-device openvino`)."""
import time

import pytest

pytest.importorskip("openvino", reason="the OpenVINO backend needs openvino: pip install 'octavo[openvino]'")

from octavo import LLM, SamplingParams
from octavo.backend import ConfigError, NewRequestData, RequestStates, ScheduledRequest, SchedulerOutput
from octavo.testing import checks
from octavo.testing.tiny_models import make_tiny_model
from octavo_openvino import OpenVINOBackend, OpenVINOOptions
from octavo_openvino.worker import build_feed


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ov-cache"))


def make_llm(path, cache_dir, **kwargs):
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in OpenVINOOptions.__dataclass_fields__}
    return LLM(path, backend=OpenVINOBackend(OpenVINOOptions(model_cache_dir=cache_dir, **options)), **kwargs)


def test_octavo_devices_lists_openvino_with_its_precisions(capsys):
    from octavo.cli import main

    assert main(["devices"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("openvino"))
    assert "usable (OpenVINO" in line and "FP32" in line, line


def test_step_inputs_from_block_tables():
    """A prefill chunk with two blocks already cached (a prefix hit), a decode and a new
    prompt, in one step: the paged-attention inputs and the logits rows."""
    params = SamplingParams(temperature=0)
    batch = SchedulerOutput(
        new_requests=[NewRequestData("a", list(range(100, 170)), [], params, None),
                      NewRequestData("b", [7, 8, 9], [], params, None)],
        requests=[ScheduledRequest("a", 64, 6, [], [4, 9, 2], samples=True),
                  ScheduledRequest("b", 0, 3, [], [5], samples=False)],
        num_batched_tokens=9, block_size=32)
    reqs = RequestStates().update(batch)
    feed = build_feed(batch, reqs)
    a = feed.arrays
    assert a["input_ids"].tolist() == [164, 165, 166, 167, 168, 169, 7, 8, 9]
    assert a["positions"].tolist() == [64, 65, 66, 67, 68, 69, 0, 1, 2]
    assert a["past_lens"].tolist() == [64, 0]
    assert a["subsequence_begins"].tolist() == [0, 6, 9]
    assert a["block_indices"].tolist() == [4, 9, 2, 5]
    assert a["block_indices_begins"].tolist() == [0, 3, 4]
    assert int(a["max_context_len"]) == 70
    assert a["sample_indices"].tolist() == [5] and feed.sample_rows == [0]


def test_second_start_reads_the_disk_cache(tiny_llama, cache_dir, capsys):
    """The first engine converts the checkpoint, the second (same model and options) does
    not; other options (int8 weights) are another cache entry."""
    times = []
    for expect_converted in (True, False):
        start = time.perf_counter()
        llm = make_llm(tiny_llama, cache_dir, dtype="float32", num_kv_blocks=16)
        times.append(time.perf_counter() - start)
        assert llm.engine.worker.converted is expect_converted
        out = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(temperature=0, max_tokens=4))
        assert len(out[0].outputs[0].token_ids) == 4
    with capsys.disabled():
        print(f"\nOpenVINO engine start, tiny Llama: converting {times[0]:.2f} s, from the disk cache {times[1]:.2f} s")
    assert make_llm(tiny_llama, cache_dir, dtype="float32", quantization="int8",
                    num_kv_blocks=16).engine.worker.converted


@pytest.mark.parametrize("bad, message", [
    (dict(block_size=16), "block sizes"),
    (dict(int4_group_size=0), "--int4-group-size"),
    (dict(kv_cache_dtype="fp8"), "kv cache dtypes"),
])
def test_bad_settings_are_rejected(tiny_llama, cache_dir, bad, message):
    with pytest.raises(ConfigError, match=message):
        make_llm(tiny_llama, cache_dir, **bad)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "u8"])
def test_bf16_close_to_hf(tmp_path, cache_dir, family, kv_cache_dtype):
    """bf16 inference (and the u8 KV cache) judged per token by HF's fp32 distribution."""
    path = make_tiny_model(family, str(tmp_path))
    checks.check_half_precision_close_to_hf(
        lambda p, **kw: make_llm(p, cache_dir, kv_cache_dtype=kv_cache_dtype, **kw), path)
