"""Communicators for tensor-parallel ranks (`octavo.backend.Communicator`): the single-rank
one the models use when there is no parallelism, and torch.distributed's, which backends
get by default (`Backend.communicator`: gloo for host memory, NCCL for GPUs)."""
from __future__ import annotations

import datetime
import socket
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from octavo.backend import Communicator, ParallelRank

# How long a collective may wait for a missing rank before it raises. The engine notices a
# dead worker by itself within a second (the executors watch their processes); this only
# bounds the ranks left waiting on it, which the engine then ends anyway.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


class Rendezvous:
    """The torch.distributed store the ranks of one engine meet at, hosted by the engine's
    process on `host` only (loopback for workers on this machine; the node's address when
    they span machines); `init_method` is what the ranks get (`ParallelRank.init_method`).
    torch's own tcp:// rendezvous would have rank 0 listen on every interface."""

    def __init__(self, host: str):
        listener = socket.create_server((host, 0))
        port = listener.getsockname()[1]
        self.store = dist.TCPStore(host, port, is_master=True, master_listen_fd=listener.detach(),
                                   wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)  # the store owns it
        self.init_method = f"tcp://{host}:{port}"

    def close(self) -> None:
        self.store = None


class SingleRank(Communicator):
    """One rank: every collective is the identity."""

    def __init__(self) -> None:
        super().__init__(0, 1)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor, dim: int = -1, dst: int = 0) -> torch.Tensor | None:
        return x


class TorchCommunicator(Communicator):
    """torch.distributed's default group over `backend` ("gloo", "nccl", ...), one per process."""

    def __init__(self, backend: str | None, rank: ParallelRank, device: torch.device):
        if backend is None:
            raise ValueError("TorchCommunicator needs a torch.distributed backend name")
        super().__init__(rank.rank, rank.world_size)
        self.device = device
        kwargs = {"device_id": device} if device.type not in ("cpu", "meta") else {}
        address = urlsplit(rank.init_method)
        store = dist.TCPStore(address.hostname, address.port, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        dist.init_process_group(backend, store=store, rank=rank.rank, world_size=rank.world_size,
                                timeout=COLLECTIVE_TIMEOUT, **kwargs)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=dim)

    def gather(self, x: torch.Tensor, dim: int = -1, dst: int = 0) -> torch.Tensor | None:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)] if self.rank == dst else None
        dist.gather(x, parts, dst=dst)
        return torch.cat(parts, dim=dim) if parts is not None else None

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
