"""The conformance kit's `--octavo-engine-arg NAME=VALUE`: YAML values, under each check's own."""
import pytest

from octavo.testing.plugin import KitTarget, _engine_args


def test_engine_args_are_yaml_values():
    assert _engine_args(["max_num_seqs=16", "enforce_eager=true", "cuda_graph_sizes=[1, 2]", "name=a=b"]) == \
        {"max_num_seqs": 16, "enforce_eager": True, "cuda_graph_sizes": [1, 2], "name": "a=b"}
    with pytest.raises(pytest.UsageError, match="NAME=VALUE"):
        _engine_args(["max_num_seqs"])


def test_a_checks_own_arguments_win(monkeypatch):
    built = {}
    monkeypatch.setattr("octavo.LLM", lambda model, **kwargs: built.update(kwargs))
    target = KitTarget("cpu", "cpu", object, ["llama"], 1e-4, {"max_num_seqs": 16, "max_num_batched_tokens": 64})
    target.make_llm("model", max_num_batched_tokens=24)
    assert built == {"device": "cpu", "max_num_seqs": 16, "max_num_batched_tokens": 24}
