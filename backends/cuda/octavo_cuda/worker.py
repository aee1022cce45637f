"""`CudaWorker`: the core's TorchWorker on a CUDA (or ROCm/HIP) device.

What it adds to TorchWorker is KV-cache sizing by profiling (`num_kv_blocks`):
`config.num_kv_blocks` wins, then `config.kv_cache_memory`, else a profile step at the
largest batch the scheduler can send (`profile_batch`) and `--gpu-memory-utilization`
(default 0.9) of the device (arithmetic in `memory.py`).

CUDA graphs of decode steps come through the contract's static-shape hook
(`CudaBackend.step_graphs`, `cuda_graphs.CudaGraphs`): TorchWorker captures them in warm-up.

Tensor parallelism: one CudaWorker per rank, on its local rank's GPU, its shard of the model
and its heads' KV cache (TorchWorker does both, with NCCL through `Backend.communicator`).
Not yet run on a GPU machine: ranks run eagerly (no CUDA graphs) until it has.
"""
from __future__ import annotations

import torch

from octavo.backend import (AttentionBackend, Backend, EngineConfig, NewRequestData, ParallelRank, SamplingParams,
                            ScheduledRequest, SchedulerOutput, TorchWorker)
from octavo_cuda.memory import MemorySample, kv_cache_bytes, num_blocks_for
from octavo_cuda.runtime import CUDA_RUNTIME, GpuRuntime


def profile_batch(config: EngineConfig, max_model_len: int, block_size: int) -> SchedulerOutput:
    """The heaviest step the scheduler may send: max_num_batched_tokens prompt tokens spread
    over up to max_num_seqs requests (each within max_model_len), every request sampling.
    Block ids are 0..n-1: the caller allocates a cache of `sum of blocks` for it."""
    total = config.max_num_batched_tokens or 2048
    num_reqs = max(1, min(config.max_num_seqs, total))
    per_req = min(max_model_len - 1, -(-total // num_reqs))
    num_reqs = min(num_reqs, -(-total // per_req))
    new, requests, next_block, left = [], [], 0, total
    for i in range(num_reqs):
        n = min(per_req, left)
        if n <= 0:
            break
        left -= n
        nblocks = -(-n // block_size)
        new.append(NewRequestData(f"profile-{i}", [0] * n, [], SamplingParams(temperature=0.0, max_tokens=1), None))
        requests.append(ScheduledRequest(f"profile-{i}", 0, n, [], list(range(next_block, next_block + nblocks)),
                                         samples=True))
        next_block += nblocks
    return SchedulerOutput(new, requests, num_batched_tokens=total - left, block_size=block_size)


def run_profile_step(worker: TorchWorker, block_size: int) -> int:
    """Run `profile_batch` through the worker on a temporary cache; returns that cache's bytes."""
    batch = profile_batch(worker.config, worker.model_config.max_model_len, block_size)
    num_blocks = sum(len(r.new_block_ids) for r in batch.requests)
    worker.allocate_kv_cache(num_blocks, block_size)
    worker.execute_model(batch)
    worker.sample_tokens(None)
    return num_blocks * worker.kv_bytes_per_block(block_size)


def _sample(runtime: GpuRuntime, device: torch.device) -> MemorySample:
    free, total = runtime.api.mem_get_info(device)
    return MemorySample(free=free, total=total, reserved=runtime.api.memory_reserved(device))


class CudaWorker(TorchWorker):
    def __init__(self, config: EngineConfig, backend: Backend, device: torch.device,
                 attention: AttentionBackend, runtime: GpuRuntime = CUDA_RUNTIME,
                 rank: ParallelRank | None = None) -> None:
        super().__init__(config, backend, device, attention, rank)
        self.runtime = runtime
        runtime.api.set_device(device)
        runtime.api.empty_cache()
        runtime.api.reset_peak_memory_stats(device)
        self._mem_start = _sample(runtime, device)  # before the weights: what this process starts from

    def num_kv_blocks(self, block_size: int) -> int:
        per_block = self.kv_bytes_per_block(block_size)
        if self.config.num_kv_blocks:
            return self.config.num_kv_blocks
        if self.config.kv_cache_memory:
            return num_blocks_for(self.config.kv_cache_memory, per_block)
        temp_cache = run_profile_step(self, block_size)
        self.runtime.api.synchronize(self.device)
        peak = self.runtime.api.max_memory_allocated(self.device) - temp_cache
        self.runner = None  # drop the profile cache's runner; allocate_kv_cache makes the real one
        self.runtime.api.empty_cache()
        after = _sample(self.runtime, self.device)
        utilization = self.backend.options.gpu_memory_utilization
        return num_blocks_for(kv_cache_bytes(self._mem_start, after, peak, utilization), per_block)

    def shutdown(self) -> None:
        super().shutdown()
        self.runtime.api.empty_cache()
