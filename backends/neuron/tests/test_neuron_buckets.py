"""Bucket plans and the choice of compiled graph, on their own (no NxDI).

The last test compares the backend's choice with the fake NxDI's (which follows NxDI's
ModelWrapper) over every small (active, prefix) pair and position.
"""
import pytest

from octavo.backend import ConfigError
from octavo_neuron.buckets import BucketPlan, power_of_two_buckets


def test_power_of_two_buckets_as_nxdi_spaces_them():
    assert power_of_two_buckets(128, 2048) == [128, 256, 512, 1024, 2048]
    assert power_of_two_buckets(128, 1000) == [128, 256, 512, 1000]  # log2(1000) rounds up to 10
    assert power_of_two_buckets(128, 700) == [128, 256, 700]
    assert power_of_two_buckets(512, 512) == [512]


def test_default_plan_ends_at_max_model_len():
    plan = BucketPlan.build(2048, 32)
    assert plan.context == plan.token == plan.prefix == (128, 256, 512, 1024, 2048)
    assert plan.max_model_len == 2048


def test_max_model_len_is_cut_to_the_largest_bucket_and_whole_blocks():
    plan = BucketPlan.build(4096, 16, context=[64, 256], token=[128, 512, 1024])
    assert plan.max_model_len == 256 and plan.context == (64, 256) and plan.token == (128, 256)
    assert BucketPlan.build(1000, 16).max_model_len == 992  # 62 blocks
    assert BucketPlan.build(40, 16).token == (32,)


def test_short_contexts_default_to_one_bucket():
    assert BucketPlan.build(64, 16).context == (64,)
    assert BucketPlan.build(512, 16).context == (128, 256, 512)


@pytest.mark.parametrize("buckets", [[100, 256], [0, 64], [-32]])
def test_buckets_must_be_whole_blocks(buckets):
    with pytest.raises(ConfigError, match="context-encoding-buckets"):
        BucketPlan.build(512, 32, context=buckets)


def test_context_bucket_first_fit_with_prefix_moved_into_spare_active_slots():
    plan = BucketPlan.build(1024, 16, context=[64, 128, 1024], prefix=[128, 512])
    assert plan.context_bucket(10, 0) == (64, 0)
    assert plan.context_bucket(64, 0) == (64, 0)
    assert plan.context_bucket(65, 0) == (128, 0)
    assert plan.context_bucket(10, 54) == (64, 0)  # the 54 cached tokens fit the spare 54 slots
    assert plan.context_bucket(10, 100) == (64, 128)
    assert plan.context_bucket(100, 300) == (128, 512)
    with pytest.raises(ValueError, match="largest context-encoding bucket"):
        plan.context_bucket(1025, 0)


def test_nxdi_runs_257_to_512_tokens_as_one_prefill():
    plan = BucketPlan.build(2048, 32)
    assert plan.context_bucket(100, 300) == (512, 0)
    assert plan.context_bucket(100, 100) == (128, 128)


def test_token_bucket_holds_the_position():
    plan = BucketPlan.build(512, 32, token=[64, 128, 512])
    assert plan.token_bucket(0) == 64 and plan.token_bucket(63) == 64 and plan.token_bucket(64) == 128
    with pytest.raises(ValueError, match="largest token-generation bucket"):
        plan.token_bucket(512)


def test_choice_agrees_with_the_fake_nxdi():
    """The fake follows NxDI's first fit; the backend predicts the same graph."""
    from neuron_on_fake_nxdi import FAKE_NXDI  # noqa: F401 (the fake NxDI on sys.path)
    from neuronx_distributed_inference.models.config import InferenceConfig, NeuronConfig
    from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM

    plan = BucketPlan.build(1024, 16, context=[32, 128, 512, 1024], prefix=[64, 256])
    nc = NeuronConfig(seq_len=1024, enable_bucketing=True, context_encoding_buckets=list(plan.context),
                      prefix_buckets=list(plan.prefix), token_generation_buckets=list(plan.token),
                      is_block_kv_layout=True, is_prefix_caching=True, pa_block_size=16)
    fake = NeuronBaseForCausalLM("unused", InferenceConfig(nc))
    for active in range(1, 1025, 7):
        for prefix in range(0, 1025 - active, 13):
            assert plan.context_bucket(active, prefix) == fake._select_cte_bucket(active, prefix), (active, prefix)
    for position in range(1024):
        assert plan.token_bucket(position) == fake._select_tkg_bucket(position)
