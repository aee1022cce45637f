"""Tensor parallelism on the CPU backend, for real: two worker processes of one thread and
one core each, talking through gloo, under multiprocessing and on a local Ray cluster.

Each family's TP=2 engine runs the kit's HF comparison under preemption and chunked prefill
at once (a 12-block cache, 24-token steps), then logprobs, seeded sampling and guided
decoding on the same engine (rank 0 samples; the others only compute), and must end idle
with no leaked blocks.
"""
import pytest

from octavo import LLM
from octavo.config import ConfigError
from octavo.testing import checks

FAMILIES = ["llama", "qwen2", "gemma3"]
TP2 = dict(device="cpu", dtype="float32", tensor_parallel_size=2, num_threads=1,
           **checks.SCENARIOS["preemption"], **checks.SCENARIOS["chunked_prefill"])


def check_tp_engine(llm: LLM, model_dir: str) -> None:
    same = lambda *_, **__: llm  # noqa: E731 - the checks that build an engine get this one
    checks.check_greedy_matches_hf(same, model_dir, "preemption")  # chunked prefill too: TP2's 24-token steps
    checks.check_logprobs_match_hf(same, model_dir)
    checks.check_seeded_sampling(llm)
    checks.check_guided_decoding(llm, "json")
    checks.assert_no_leaks(llm)


@pytest.fixture
def tp_llm():
    """tp_llm(path, **extra) -> a TP=2 LLM, shut down (workers and all) after the test."""
    made = []

    def make(path, **extra):
        made.append(LLM(path, **{**TP2, **extra}))
        return made[-1]

    yield make
    for llm in made:
        llm.engine.shutdown()


@pytest.mark.parametrize("family", FAMILIES)
def test_tp2_matches_hf(tiny_model, tp_llm, family):
    import psutil

    llm = tp_llm(tiny_model(family))
    cores = [set(psutil.Process(p.pid).cpu_affinity()) for p in llm.engine.worker.procs]
    assert len(cores) == 2 and cores[0] and cores[1] and not cores[0] & cores[1]  # disjoint shares
    check_tp_engine(llm, tiny_model(family))


def test_tp2_replicates_kv_heads(tiny_model, tp_llm):
    """One key/value head for two ranks: each rank keeps it (as vLLM)."""
    path = tiny_model("llama", num_key_value_heads=1)
    checks.check_greedy_matches_hf(lambda *_, **__: tp_llm(path), path, "preemption")


@pytest.mark.parametrize("family", FAMILIES)
def test_tp2_on_ray_matches_hf(tiny_model, tp_llm, ray_cluster, family):
    llm = tp_llm(tiny_model(family), distributed_executor_backend="ray")
    assert len(llm.engine.worker.actors) == 2
    check_tp_engine(llm, tiny_model(family))


def test_a_dead_worker_fails_the_engine(tiny_model, tp_llm):
    """Killing rank 1 mid-run ends generate() with the reason, at once, and every later call."""
    from octavo.executor.base import WorkerError

    llm = tp_llm(tiny_model("llama"))
    engine = llm.engine
    engine.add_request("a", list(range(3, 40)), checks.GREEDY)
    engine.step()
    engine.worker.procs[1].kill()
    with pytest.raises(WorkerError, match="worker rank 1 .* exited with code -9"):
        for _ in range(100):
            engine.step()
    assert engine.worker_error() is not None
    with pytest.raises(WorkerError):
        engine.step()


@pytest.mark.parametrize("settings, message", [
    (dict(pipeline_parallel_size=2), "pipeline parallelism is not supported"),
    (dict(tensor_parallel_size=3), "tensor_parallel_size 3 does not divide the model's 4 attention heads"),
    (dict(tensor_parallel_size=0), "tensor_parallel_size must be at least 1"),
    (dict(distributed_executor_backend="mpi"), "distributed_executor_backend must be one of mp, ray"),
    (dict(data_parallel_size=2), "LLM runs one engine"),
    (dict(tensor_parallel_size=2, cpu_omp_threads_bind="0|1|2"), "gives 3 core lists for 2 worker processes"),
])
def test_parallel_settings_refused(tiny_model, settings, message):
    """Refused before any worker process starts (the last one by the worker, at load)."""
    with pytest.raises((ConfigError, RuntimeError), match=message):
        LLM(tiny_model("llama"), device="cpu", dtype="float32", **settings)


def test_parallel_flags(tmp_path):
    """vLLM's flags (and short forms), the YAML keys, and --help saying pipeline parallelism
    is out of scope."""
    import argparse

    from octavo.engine.args import config_from_args
    from octavo.server.cli import add_serve_parser, resolve_args

    parser = argparse.ArgumentParser(prog="octavo")
    serve = add_serve_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(resolve_args(parser.parse_args(
        ["serve", "-tp", "2", "--data-parallel-size", "3", "--distributed-executor-backend", "ray"])))
    assert (config.tensor_parallel_size, config.data_parallel_size, config.distributed_executor_backend) == (2, 3, "ray")
    yaml = tmp_path / "serve.yaml"
    yaml.write_text("tensor_parallel_size: 2\npipeline-parallel-size: 2\n")
    config = config_from_args(resolve_args(parser.parse_args(["serve", "--config", str(yaml)])))
    assert (config.tensor_parallel_size, config.pipeline_parallel_size) == (2, 2)  # then refused at start
    help_text = " ".join(serve.format_help().split())
    assert "--pipeline-parallel-size PIPELINE_PARALLEL_SIZE, -pp PIPELINE_PARALLEL_SIZE not supported: pipeline " \
           "parallelism is out of scope for now" in help_text
