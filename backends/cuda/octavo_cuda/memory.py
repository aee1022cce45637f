"""KV-cache sizing from a profile run (gpu_memory_utilization), as plain arithmetic.

The worker samples device memory before loading the model and after a profile forward at
the largest batch; this module turns the samples into a KV-cache budget. Kept free of device
calls so it is tested on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class MemorySample:
    free: int  # torch.cuda.mem_get_info()[0]
    total: int  # torch.cuda.mem_get_info()[1]
    reserved: int  # torch.cuda.memory_reserved()


def kv_cache_bytes(start: MemorySample, after: MemorySample, peak_allocated: int, utilization: float) -> int:
    """Bytes left for the KV cache once the model and its peak activations are in.

    This process may use `utilization * total`. Of that, the profile used the torch peak
    (weights + activations: `torch.cuda.max_memory_allocated()` since the start sample) plus
    whatever grew outside torch's allocator (cuBLAS workspaces, NCCL, graphs). Memory other
    processes held at the start is not ours to take: if less than the budget was free then,
    that is an error, not a smaller cache.
    """
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    budget = int(start.total * utilization)
    if start.free < budget:
        raise MemoryError(
            f"gpu_memory_utilization={utilization} asks for {budget / GiB:.2f} GiB of the "
            f"{start.total / GiB:.2f} GiB device, but only {start.free / GiB:.2f} GiB was free at start "
            f"(other processes?); lower gpu_memory_utilization or free the device")
    non_torch_growth = max(0, (start.free - after.free) - (after.reserved - start.reserved))
    kv = budget - peak_allocated - non_torch_growth
    if kv <= 0:
        raise MemoryError(
            f"no memory left for the KV cache: budget {budget / GiB:.2f} GiB, model + peak activations "
            f"{peak_allocated / GiB:.2f} GiB, other allocations {non_torch_growth / GiB:.2f} GiB; raise "
            f"gpu_memory_utilization or lower max_num_batched_tokens")
    return kv


def num_blocks_for(kv_bytes: int, bytes_per_block: int) -> int:
    if bytes_per_block <= 0:
        raise ValueError(f"bytes_per_block must be positive, got {bytes_per_block}")
    return kv_bytes // bytes_per_block
