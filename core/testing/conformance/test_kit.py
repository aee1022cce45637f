"""The checks, per model family the backend declares (`octavo.testing.checks` holds them)."""
from __future__ import annotations

import pytest

from octavo.testing import checks


@pytest.mark.parametrize("scenario", list(checks.SCENARIOS))
def test_greedy_matches_hf(kit, model_dir, scenario):
    if scenario == "chunked_prefill" and not kit.backend_class.chunked_prefill:
        pytest.skip(f"{kit.label} declares no chunked prefill (prompts run whole)")
    checks.check_greedy_matches_hf(kit.make_llm, model_dir, scenario)


def test_logprobs_match_hf(kit, model_dir):
    checks.check_logprobs_match_hf(kit.make_llm, model_dir, atol=kit.logprob_atol,
                                   prompt_logprobs=kit.backend_class.prompt_logprobs)


@pytest.mark.parametrize("name", list(checks.PROCESSED_GREEDY))
def test_logit_processing(llm, model_dir, name):
    checks.check_processed_greedy(llm, model_dir, name)


@pytest.mark.parametrize("name", ["top_k", "top_p", "min_p"])
def test_sampling_filters(llm, model_dir, name):
    checks.check_sampling_filters(llm, model_dir, name)


def test_temperature_zero_is_greedy(llm, model_dir):
    checks.check_temperature_zero_is_greedy(llm, model_dir)


def test_max_tokens_eos_and_stop_strings(llm, model_dir):
    checks.check_max_tokens_eos_and_stop_strings(llm, model_dir)


def test_special_tokens_in_text(llm):
    checks.check_special_tokens_in_text(llm)


def test_seeded_sampling(llm):
    checks.check_seeded_sampling(llm)


def test_parallel_sampling(llm, model_dir):
    checks.check_parallel_sampling(llm, model_dir)


@pytest.mark.parametrize("kind", list(checks.GUIDED))
def test_guided_decoding(llm, kind):
    checks.check_guided_decoding(llm, kind)


def test_abort(llm, model_dir):
    checks.check_abort(llm, model_dir)


@pytest.mark.parametrize("name", list(checks.BAD_CONFIGS))
def test_bad_config_rejected(kit, model_dir, name):
    checks.check_bad_config_rejected(kit.make_llm, model_dir, name)
