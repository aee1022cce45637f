"""Workers as child processes of the engine: one per rank.

They fork from multiprocessing's fork server, a clean process started once per engine
process that has imported torch, the model code and the backend's package, so a worker
starts in a fraction of a second instead of importing them again (and no worker forks from
a process with threads). It keeps the environment the engine process had when it started.

Each worker has a pipe to the engine. A call is pickled once and written to every rank's
pipe; the engine then waits on every pipe and every process's sentinel at once, so an
error or a death anywhere ends the wait at once instead of hanging on rank 0's answer. A
watcher thread notices a death while the engine is idle.
"""
from __future__ import annotations

import logging
import multiprocessing
import pickle
import threading
import weakref
from multiprocessing.connection import wait
from typing import Any

from octavo.backend import Backend, EngineConfig
from octavo.distributed import Rendezvous
from octavo.executor import local_ranks
from octavo.executor.base import Executor
from octavo.executor.worker_host import run_worker_process

logger = logging.getLogger("octavo")
# What every worker imports, imported once in the fork server (transformers' config classes
# alone take seconds). Names that fail to import are skipped.
PRELOAD = ["octavo.executor.worker_host", "octavo.loader", "transformers.models.auto.configuration_auto",
           "transformers.activations"]


class MultiprocExecutor(Executor):
    def __init__(self, config: EngineConfig, backend: Backend, replica: int = 0):
        super().__init__()
        self.rendezvous = Rendezvous("127.0.0.1")
        ranks = local_ranks(config, replica, self.rendezvous.init_method)
        self.world_size = len(ranks)
        self._reply: list[int] = []
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD + [type(backend).__module__])
        self.conns, self.procs, self._parent_alive = [], [], []
        for rank in ranks:
            conn, child_conn = ctx.Pipe()
            alive_read, alive_write = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=run_worker_process, name=f"octavo-worker-{rank.local_rank}", daemon=True,
                               args=(backend, config, rank, logging.getLogger().level, child_conn, alive_read))
            proc.start()
            child_conn.close()
            alive_read.close()
            self.conns.append(conn)
            self.procs.append(proc)
            self._parent_alive.append(alive_write)
        logger.info("started %d worker processes (pids %s)", self.world_size, ", ".join(str(p.pid) for p in self.procs))
        threading.Thread(target=_watch, args=(weakref.ref(self), self.procs), name="octavo-worker-watch",
                         daemon=True).start()
        weakref.finalize(self, _kill, self.procs)  # an engine that failed to start leaves no workers

    def _death_reason(self) -> str:
        """Which workers exited and how; a pipe closes a moment before the exit code is
        known, so this waits a little for it."""
        wait([p.sentinel for p in self.procs], timeout=1.0)
        dead = [(r, p) for r, p in enumerate(self.procs) if not p.is_alive()]
        return "; ".join(f"worker rank {r} (pid {p.pid}) exited with code {p.exitcode}" for r, p in dead) \
            or "a worker process closed its pipe"

    # ------------------------------------------------------------------ transport

    def _send(self, method: str, args_per_rank: list[tuple], reply: list[int]) -> None:
        self._reply = reply
        payloads: dict[tuple[int, bool], bytes] = {}  # the same args are pickled once
        try:
            for rank, (conn, args) in enumerate(zip(self.conns, args_per_rank)):
                key = (id(args), rank in reply)
                if key not in payloads:
                    payloads[key] = pickle.dumps((method, args, key[1]), protocol=pickle.HIGHEST_PROTOCOL)
                conn.send_bytes(payloads[key])
        except OSError as exc:
            raise self.fail(f"cannot reach the worker processes ({exc}); {self._death_reason()}") from None

    def _replies(self) -> list[Any]:
        """Waits on every pipe (a rank not asked to answer writes only to report an error)
        and every process sentinel."""
        results: dict[int, Any] = {}
        by_conn = {conn: rank for rank, conn in enumerate(self.conns)}
        by_sentinel = {p.sentinel: rank for rank, p in enumerate(self.procs)}
        while len(results) < len(self._reply):
            for ready in wait([*by_conn, *by_sentinel]):
                rank = by_conn[ready] if ready in by_conn else by_sentinel[ready]
                conn = self.conns[rank]
                try:
                    if ready in by_sentinel and not conn.poll():
                        raise EOFError
                    kind, value = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    raise self.fail(self._death_reason()) from None
                if kind == "error":
                    raise self.fail(f"worker rank {rank} raised {value}")
                results[rank] = value
        return [results[rank] for rank in self._reply]

    def _stop_workers(self, grace_s: float) -> None:
        for proc in self.procs:
            proc.join(timeout=grace_s)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)

    def shutdown(self) -> None:
        super().shutdown()
        for conn in [*self.conns, *self._parent_alive]:
            conn.close()
        self.rendezvous.close()


def _watch(executor_ref: weakref.ref, procs: list) -> None:
    """Fail the executor as soon as any worker exits (it holds no reference while waiting)."""
    wait([p.sentinel for p in procs])
    executor = executor_ref()
    if executor is not None:
        executor.fail(executor._death_reason())


def _kill(procs: list) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.kill()
