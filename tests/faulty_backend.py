"""A backend that fails on purpose, for the fault-isolation tests: the CPU backend, its worker
raising in `execute_model` for every step that holds a chosen request. It goes through the backend
contract only (a Backend subclass whose Worker wraps the CPU one), as a vendor's would.

`octavo serve --device faulty` finds it when this directory is on the path together with a
`*.dist-info` that registers it (see `install_entry_point`).
"""
from __future__ import annotations

import os
from collections import Counter

from octavo.backend import ENTRY_POINT_GROUP, Worker
from octavo_cpu import CpuBackend


class InjectedFault(RuntimeError):
    pass


class FaultyWorker(Worker):
    """The wrapped worker, except that `execute_model` raises once a scheduled request whose
    id contains `poison` (None: any request) has run `after_steps` steps."""

    def __init__(self, inner: Worker, poison: str | None, after_steps: int):
        self.inner = inner
        self.poison = poison
        self.after_steps = after_steps
        self.steps: Counter[str] = Counter()  # steps run so far by each poisoned request

    def load_model(self):
        return self.inner.load_model()

    def num_kv_blocks(self, block_size: int) -> int:
        return self.inner.num_kv_blocks(block_size)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.inner.allocate_kv_cache(num_blocks, block_size)

    def warm_up(self) -> None:
        self.inner.warm_up()

    def execute_model(self, batch) -> None:
        poisoned = [r.request_id for r in batch.requests if self.poison is None or self.poison in r.request_id]
        self.steps.update(poisoned)
        failing = [rid for rid in poisoned if self.steps[rid] > self.after_steps]
        if failing:
            raise InjectedFault(f"injected fault for {', '.join(failing)}")
        self.inner.execute_model(batch)

    def sample_tokens(self, grammar):
        return self.inner.sample_tokens(grammar)

    def shutdown(self) -> None:
        self.inner.shutdown()


class FaultyBackend(CpuBackend):
    name = "faulty"

    def __init__(self, options=None, *, poison: str | None = None, after_steps: int = 0):
        """poison: the substring of the request ids to fail; None (what `--device faulty`
        gets) fails every step, as a broken device would."""
        super().__init__(options)
        self.poison = poison
        self.after_steps = after_steps

    def create_worker(self, config):
        return FaultyWorker(super().create_worker(config), self.poison, self.after_steps)


def install_entry_point(directory: str) -> str:
    """Register FaultyBackend as device `faulty` for processes with `directory` and this
    file's directory on PYTHONPATH; returns that PYTHONPATH."""
    dist = os.path.join(directory, "octavo_faulty-0.0.dist-info")
    os.makedirs(dist, exist_ok=True)
    with open(os.path.join(dist, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: octavo-faulty\nVersion: 0.0\n")
    with open(os.path.join(dist, "entry_points.txt"), "w") as f:
        f.write(f"[{ENTRY_POINT_GROUP}]\nfaulty = faulty_backend:FaultyBackend\n")
    return os.pathsep.join([directory, os.path.dirname(os.path.abspath(__file__))])
