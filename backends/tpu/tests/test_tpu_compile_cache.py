"""XLA's persistent compilation cache (`--xla-cache-dir`) across two engine starts, each in
its own process (the cache is read once per process).

The first start compiles every graph and writes each to the cache. The second finds every
graph it needs there (no cache miss). Whether it then compiles nothing depends on torch-xla
loading the executables back: torch-xla 2.9 cannot (its PJRT client answers "Deserializing
serialized executable not supported", on XLA's CPU client and on TPUs alike:
pytorch/xla#9094, fix pending in pytorch/xla#9759), so today the second start recompiles
exactly the graphs it failed to load. The test holds both cases apart: once torch-xla
loads them, it asserts that nothing compiles.
"""
import json
import os
import subprocess
import sys

from octavo.testing.tiny_models import make_tiny_model

START = """
import json, sys
import torch_xla.debug.metrics as met
from octavo import LLM
from octavo_tpu import TpuBackend

llm = LLM(sys.argv[1], backend=TpuBackend(), dtype="float32", max_num_seqs=8, max_num_batched_tokens=16,
          xla_cache_dir=sys.argv[2])
count = lambda name: met.counter_value(name) or 0
print(json.dumps({"graphs": llm.engine.worker.runner.graphs.plan.num_graphs,
                  "warm_up": llm.engine.worker.num_warm_up_compiles, "compiles": count("UncachedCompile"),
                  "miss": count("PersistentCacheMiss"), "hit": count("PersistentCacheHit"),
                  "failed_load": count("PersistentCacheDeserializeFailure")}))
"""


def start_engine(model: str, cache: str) -> dict:
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    done = subprocess.run([sys.executable, "-c", START, model, cache], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_start_finds_every_graph_in_the_cache(tmp_path):
    model = make_tiny_model("llama", str(tmp_path / "model"))
    cache = str(tmp_path / "xla-cache")
    first = start_engine(model, cache)
    assert first["warm_up"] == first["graphs"] == 6  # 1 token bucket x 3 + 1 request bucket x 3
    assert first["miss"] == first["compiles"] == len(os.listdir(cache))  # each compiled graph is stored
    second = start_engine(model, cache)
    assert second["miss"] == 0, "a graph of the second start was not in the cache"
    assert second["hit"] + second["failed_load"] == first["compiles"]
    assert second["compiles"] == second["failed_load"]  # what loads compiles nothing
    if second["failed_load"] == 0:
        assert second["compiles"] == 0
