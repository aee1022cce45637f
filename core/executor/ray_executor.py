"""Workers as Ray actors (`--distributed-executor-backend ray`), placed by a placement group.

One bundle per rank (`Backend.ray_resource`), packed onto as few nodes as the cluster
allows: the ranks of an engine may span the nodes of an existing cluster (`ray start --head`
on one, `ray start --address` on the others; the engine joins it through RAY_ADDRESS or the
cluster last started on this machine, or starts a local one). The engine's process hosts
the torch.distributed rendezvous, on its node's address. Calls are actor tasks, which one
actor runs in the order they were sent; the step is put in the object store once for every
rank.

A dead actor fails the tasks sent to it (RayActorError): the engine waits on every rank's
tasks, so a death ends the wait, and a watcher pings the actors while the engine is idle.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

from octavo.backend import Backend, ConfigError, EngineConfig, ParallelRank
from octavo.distributed import Rendezvous
from octavo.executor.base import Executor
from octavo.executor.worker_host import create_rank_worker

logger = logging.getLogger("octavo")
PLACEMENT_TIMEOUT_S = 120.0  # how long the cluster may take to find resources for every rank
PING_INTERVAL_S = 1.0


def check_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("--distributed-executor-backend ray needs Ray: pip install 'octavo[ray]'") from None


class RayWorker:
    """The actor: one rank's worker, built once the ranks know each other (`init_worker`)."""

    def __init__(self) -> None:
        self.worker = None

    def node(self) -> tuple[str, str]:
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def pid(self) -> int:
        return os.getpid()

    def init_worker(self, backend: Backend, config: EngineConfig, rank: ParallelRank, log_level: int) -> None:
        self.worker = create_rank_worker(backend, config, rank, log_level)

    def call(self, method: str, args: tuple) -> Any:
        return getattr(self.worker, method)(*args)

    def ping(self) -> bool:
        return True


_CONNECT = threading.Lock()  # data-parallel replicas start side by side


def _connect():
    import ray

    with _CONNECT:
        if not ray.is_initialized():
            ray.init(logging_level=logging.WARNING)  # RAY_ADDRESS, the cluster started here last, or a new one
    return ray


def _actor_options(resource: str) -> dict:
    if resource == "CPU":
        return {"num_cpus": 1}
    if resource == "GPU":
        return {"num_cpus": 0, "num_gpus": 1}
    return {"num_cpus": 0, "resources": {resource: 1}}


class RayExecutor(Executor):
    def __init__(self, config: EngineConfig, backend: Backend, replica: int = 0):
        super().__init__()
        ray = _connect()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.world_size = config.tensor_parallel_size
        resource = backend.ray_resource
        self.placement = placement_group([{resource: 1.0}] * self.world_size, strategy="PACK",
                                         name=f"octavo-engine-{replica}-{os.getpid()}")
        ready, _ = ray.wait([self.placement.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(self.placement)
            raise ConfigError(f"the Ray cluster did not find {self.world_size} x {{{resource}: 1}} for data-parallel "
                              f"replica {replica} in {PLACEMENT_TIMEOUT_S:.0f} s (cluster resources: "
                              f"{ray.cluster_resources()})")
        actor_class = ray.remote(RayWorker)
        self.actors = [actor_class.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, i),
                                           **_actor_options(resource)).remote()
                       for i in range(self.world_size)]
        self._pending: list[tuple[int, Any]] = []  # (rank, ref) of calls nobody waits for
        self._reply: list[Any] = []
        ranks = self._ranks(ray, config, replica)
        self.pids = ray.get([a.pid.remote() for a in self.actors])
        self._wait_all([a.init_worker.remote(backend, config, rank, logging.getLogger().level)
                        for a, rank in zip(self.actors, ranks)])
        logger.info("started %d Ray worker actors (pids %s)", self.world_size, ", ".join(map(str, self.pids)))
        threading.Thread(target=_watch, args=(weakref.ref(self), self.actors), name="octavo-ray-watch",
                         daemon=True).start()

    def _ranks(self, ray, config: EngineConfig, replica: int) -> list[ParallelRank]:
        """Local ranks count the actors on each node (replica-major, as the replicas are
        alike); the rendezvous is this process's, on its node's address (it may be another
        node than the ranks')."""
        nodes = ray.get([a.node.remote() for a in self.actors])
        self.rendezvous = Rendezvous(ray.util.get_node_ip_address())
        init_method = self.rendezvous.init_method
        ranks = []
        for r, (node_id, _) in enumerate(nodes):
            on_node = [i for i, (n, _) in enumerate(nodes) if n == node_id]
            ranks.append(ParallelRank(rank=r, world_size=self.world_size,
                                      local_rank=replica * len(on_node) + on_node.index(r),
                                      local_world_size=config.data_parallel_size * len(on_node),
                                      init_method=init_method))
        return ranks

    # ------------------------------------------------------------------ transport

    def _send(self, method: str, args_per_rank: list[tuple], reply: list[int]) -> None:
        import ray

        shared: dict[int, Any] = {}  # the same args go to the object store once
        refs = []
        for actor, args in zip(self.actors, args_per_rank):
            if id(args) not in shared:
                shared[id(args)] = ray.put(args) if sum(a is args for a in args_per_rank) > 1 else args
            refs.append(actor.call.remote(method, shared[id(args)]))
        self._reply = [refs[r] for r in reply]
        self._pending += [(r, ref) for r, ref in enumerate(refs) if r not in reply]

    def _replies(self) -> list[Any]:
        """Waits on the answers and on every call not yet seen to finish: any rank's
        failure ends the wait."""
        import ray

        results = self._wait_all(self._reply)
        done, _ = ray.wait([ref for _, ref in self._pending], num_returns=len(self._pending), timeout=0)
        self._check(done)
        self._pending = [(r, ref) for r, ref in self._pending if ref not in done]
        return results

    def _wait_all(self, refs: list) -> list[Any]:
        import ray

        waiting = set(refs)
        while waiting:
            watch = [*waiting, *(ref for _, ref in self._pending)]
            done, _ = ray.wait(watch, num_returns=1)
            self._check(done)
            waiting -= set(done)
            self._pending = [(r, ref) for r, ref in self._pending if ref not in done]
        return ray.get(refs)

    def _check(self, done: list) -> None:
        import ray

        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise self.fail(f"a Ray worker actor failed: {type(exc).__name__}: {exc}") from None

    def _stop_workers(self, grace_s: float) -> None:
        """Ray ends an actor at once (after `shutdown` the workers have released what they hold)."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        ray.util.remove_placement_group(self.placement)
        self.rendezvous.close()


def _watch(executor_ref: weakref.ref, actors: list) -> None:
    """Ping every actor each second while the executor lives; a dead one fails it."""
    import ray

    pings: list = []
    while True:
        executor = executor_ref()
        if executor is None or executor.error is not None or executor._closing:
            return
        del executor
        pings = pings or [a.ping.remote() for a in actors]
        done, pings = ray.wait(pings, num_returns=len(pings), timeout=PING_INTERVAL_S)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                executor = executor_ref()
                if executor is not None:
                    executor.fail(f"a Ray worker actor died: {type(exc).__name__}: {exc}")
                return
        if not pings:
            time.sleep(PING_INTERVAL_S)
