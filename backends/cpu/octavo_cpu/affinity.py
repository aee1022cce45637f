"""Which cores each worker process of an engine computes on (vLLM's VLLM_CPU_OMP_THREADS_BIND).

Tensor-parallel ranks and data-parallel replicas on one machine run in processes of their
own; left alone, each one's OpenMP threads would spread over every core and the processes
would take turns on them. Bound to disjoint cores, they compute side by side.
"""
from __future__ import annotations

import os

from octavo.backend import ConfigError, ParallelRank


def parse_core_list(text: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    cores: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cores += range(int(first), int(last or first) + 1)
    return cores


def rank_cores(bind: str, rank: ParallelRank | None, available: list[int]) -> list[int] | None:
    """The cores of worker `rank` under `--cpu-omp-threads-bind` (None: leave the process as is).

    "auto": the worker processes on this node share `available` out in contiguous, equal
    parts (a lone worker keeps them all); "all": no binding; "0-3|4-7": one core list per
    local rank.
    """
    if bind == "all" or rank is None:
        return None
    if bind == "auto":
        share = len(available) // rank.local_world_size
        if share == 0:
            raise ConfigError(f"{rank.local_world_size} worker processes on this machine but only "
                              f"{len(available)} cores: lower the tensor/data parallel size")
        return available[rank.local_rank * share:(rank.local_rank + 1) * share]
    lists = bind.split("|")
    if len(lists) != rank.local_world_size:
        raise ConfigError(f"--cpu-omp-threads-bind gives {len(lists)} core lists for "
                          f"{rank.local_world_size} worker processes")
    return parse_core_list(lists[rank.local_rank])


def bind_worker(bind: str, rank: ParallelRank | None) -> int | None:
    """Pin this process to its cores; returns how many (None: not bound)."""
    cores = rank_cores(bind, rank, sorted(os.sched_getaffinity(0)))
    if cores is None:
        return None
    os.sched_setaffinity(0, cores)
    return len(cores)


def check_bind(bind: str) -> None:
    if bind in ("auto", "all"):
        return
    try:
        for part in bind.split("|"):
            parse_core_list(part)
    except ValueError:
        raise ConfigError(f"--cpu-omp-threads-bind must be auto, all or core lists like 0-3|4-7, "
                          f"got {bind!r}") from None
