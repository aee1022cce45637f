"""How an engine runs its workers: in its own process (one worker), or in worker processes
(tensor parallelism, data-parallel replicas) under multiprocessing or Ray.

`create_executor` returns a `Worker` either way; the engine drives it the same.
"""
from __future__ import annotations

from octavo.backend import Backend, ConfigError, EngineConfig, ParallelRank, Worker

EXECUTOR_BACKENDS = ("mp", "ray")


def check_parallel_config(config: EngineConfig, backend: Backend) -> None:
    """Refuse what cannot run, before any process starts."""
    if config.pipeline_parallel_size != 1:
        raise ConfigError("pipeline parallelism is not supported (out of scope for now): "
                          "use --tensor-parallel-size and --data-parallel-size")
    for name in ("tensor_parallel_size", "data_parallel_size"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.distributed_executor_backend not in (None, *EXECUTOR_BACKENDS):
        raise ConfigError(f"distributed_executor_backend must be one of {', '.join(EXECUTOR_BACKENDS)}, "
                          f"got {config.distributed_executor_backend!r}")
    if config.tensor_parallel_size > 1 and backend.distributed_backend is None:
        raise ConfigError(f"the {backend.name} backend runs one rank per engine (it declares no "
                          "distributed_backend): tensor_parallel_size must be 1")
    if config.distributed_executor_backend == "ray":
        from octavo.executor.ray_executor import check_ray

        check_ray()
    if config.tensor_parallel_size > 1:
        from octavo.loader import load_hf_config, resolve_model_path
        from octavo.models.parallel import check_tensor_parallel

        check_tensor_parallel(load_hf_config(resolve_model_path(config.model)), config.tensor_parallel_size)


def uses_worker_processes(config: EngineConfig) -> bool:
    """One worker in the engine's own process only for a lone engine of one rank without Ray."""
    return (config.tensor_parallel_size > 1 or config.data_parallel_size > 1
            or config.distributed_executor_backend == "ray")


def local_ranks(config: EngineConfig, replica: int, init_method: str) -> list[ParallelRank]:
    """The ranks of data-parallel replica `replica` when every worker process of every
    replica runs on this machine (replica-major local ranks)."""
    tp = config.tensor_parallel_size
    return [ParallelRank(rank=r, world_size=tp, local_rank=replica * tp + r,
                         local_world_size=config.data_parallel_size * tp, init_method=init_method)
            for r in range(tp)]


def create_executor(config: EngineConfig, backend: Backend, replica: int = 0) -> Worker:
    """The worker of data-parallel replica `replica`'s engine: the backend's own, in this
    process, or an executor over worker processes. `backend` has checked the config."""
    if not uses_worker_processes(config):
        return backend.create_worker(config)
    if config.distributed_executor_backend == "ray":
        from octavo.executor.ray_executor import RayExecutor

        return RayExecutor(config, backend, replica)
    from octavo.executor.multiproc import MultiprocExecutor

    return MultiprocExecutor(config, backend, replica)
