"""What a backend declares it cannot do (contract 4.1), and what the engine does about it:
no chunked prefill (prompts run whole) and no prompt logprobs (rejected at admission)."""
import pytest

from octavo import LLM, SamplingParams
from octavo.backend import ConfigError, EngineConfig
from octavo.testing.tiny_models import make_tiny_model
from octavo_cpu import CpuBackend


class WholePromptsCpu(CpuBackend):
    """The CPU backend declaring what an ahead-of-time compiled device may lack."""

    chunked_prefill = False
    prompt_logprobs = False


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("llama")))


def test_no_chunked_prefill_turns_it_off():
    config = EngineConfig()
    WholePromptsCpu().check_and_update_config(config)
    assert config.enable_chunked_prefill is False


def test_whole_prompts_need_a_step_budget_of_max_model_len(tiny_llama):
    with pytest.raises(ConfigError, match="max_num_batched_tokens 64 is below max_model_len 512"):
        LLM(tiny_llama, backend=WholePromptsCpu(), dtype="float32", max_num_batched_tokens=64, num_kv_blocks=64)


def test_prompt_logprobs_are_rejected_at_admission(tiny_llama):
    llm = LLM(tiny_llama, backend=WholePromptsCpu(), dtype="float32", num_kv_blocks=64)
    assert llm.engine.config.max_num_batched_tokens >= llm.engine.max_model_len
    with pytest.raises(ValueError, match="prompt_logprobs: the cpu backend does not compute"):
        llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(prompt_logprobs=1))
    out = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(max_tokens=2, logprobs=1))
    assert len(out[0].outputs[0].logprobs) == 2
