"""What the CPU backend adds to the conformance kit's checks (CI runs the kit with
`--octavo-device cpu`: greedy tokens and logprobs against HF for every family and scheduling
path): its low-precision paths, judged against HF fp32, and tied embeddings."""
import pytest

from octavo import LLM
from octavo.testing import checks
from octavo.testing.tiny_models import FAMILIES


def make_cpu_llm(path, **kwargs):
    return LLM(path, device="cpu", **kwargs)


def test_tied_embeddings_match_hf(tiny_model):
    checks.check_greedy_matches_hf(make_cpu_llm, tiny_model("llama", tie_word_embeddings=True), "default")


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_close_to_hf(tiny_model, family):
    """The bf16 path (packed matmuls, the C++ decode kernel where it builds) against HF fp32."""
    checks.check_half_precision_close_to_hf(make_cpu_llm, tiny_model(family))


def test_bf16_close_to_hf_with_tile_friendly_heads(tiny_model):
    """head_dim 32: the shape the CPU backend's AMX decode path takes, where the CPU has AMX."""
    checks.check_half_precision_close_to_hf(make_cpu_llm, tiny_model("llama", head_dim=32))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fp16_close_to_hf(tiny_model, family):
    """fp16 on every CPU: packed matmuls where oneDNN can pack fp16 (AVX512-FP16 or
    AVX-NE-CONVERT), F.linear elsewhere (AMD Zen 4), which used to crash at load."""
    checks.check_half_precision_close_to_hf(make_cpu_llm, tiny_model(family), dtype="float16")
