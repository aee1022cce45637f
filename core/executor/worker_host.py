"""The worker side of an executor: build the backend's worker for one rank, then run the
engine's calls on it (a multiprocessing child's loop here; Ray's actor in ray_executor.py)."""
from __future__ import annotations

import logging
import os
import pickle
import threading
import traceback
from multiprocessing.connection import Connection

import torch

from octavo.backend import Backend, EngineConfig, ParallelRank, Worker

logger = logging.getLogger("octavo")
LOG_FORMAT = "%(levelname)s %(asctime)s %(name)s (worker rank {rank}, pid {pid}): %(message)s"


def create_rank_worker(backend: Backend, config: EngineConfig, rank: ParallelRank, log_level: int) -> Worker:
    """The backend's worker for `rank`, in this (worker) process."""
    logging.basicConfig(level=log_level, format=LOG_FORMAT.format(rank=rank.rank, pid=os.getpid()), force=True)
    torch.manual_seed(config.seed)  # unseeded requests draw from this process's global generators
    return backend.create_worker(config, rank if backend.distributed_backend else None)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"


def _exit_with_parent(parent_alive: Connection) -> None:
    """Exit when the engine process goes, even from inside a collective that waits on a rank
    the engine no longer runs: the pipe's other end closes with the engine."""
    def watch() -> None:
        try:
            parent_alive.recv()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="octavo-parent-watch", daemon=True).start()


def run_worker_process(backend: Backend, config: EngineConfig, rank: ParallelRank, log_level: int,
                       conn: Connection, parent_alive: Connection) -> None:
    """A multiprocessing worker's life: build the worker, then answer calls until `shutdown`.

    Messages in: pickled (method, args, reply). Out: ("ok", result) when asked to reply,
    ("error", text) whenever a call raises (the engine then stops every worker).
    """
    _exit_with_parent(parent_alive)
    try:
        worker = create_rank_worker(backend, config, rank, log_level)
    except BaseException as exc:  # noqa: BLE001 - reported to the engine, which fails
        conn.send_bytes(pickle.dumps(("error", error_text(exc))))
        return
    while True:
        try:
            method, args, reply = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            result = getattr(worker, method)(*args)
        except BaseException as exc:  # noqa: BLE001
            conn.send_bytes(pickle.dumps(("error", error_text(exc))))
            return
        if reply:
            conn.send_bytes(pickle.dumps(("ok", result), protocol=pickle.HIGHEST_PROTOCOL))
        if method == "shutdown":
            return
