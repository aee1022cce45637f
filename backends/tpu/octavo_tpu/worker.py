"""The XLA worker: the core's torch worker with a padding page in every KV cache, KV memory
from the device, and a count of what warm-up compiled (the core's warm-up compiles every
graph of the plan: the forward passes and `XlaSampler`'s)."""
from __future__ import annotations

import logging
import time

import torch_xla

from octavo.backend import TorchWorker
from octavo_tpu.graphs import num_compiles, num_graphs_run

logger = logging.getLogger("octavo")

CPU_CLIENT_KV_CACHE_MEMORY = 1 << 30  # bytes: XLA's CPU client reports no memory to size from


class XlaWorker(TorchWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_warm_up_compiles = 0  # graphs compiled in warm-up
        self.num_warm_up_graphs = 0  # graphs warm-up ran (some may have been compiled already)

    def load_model(self):
        model_config = super().load_model()
        torch_xla.sync()  # the weights (and rotary tables) land on the device now
        return model_config

    def kv_memory_budget(self) -> int:
        """Free TPU memory (HBM) within --hbm-memory-utilization; on XLA's CPU client, which
        reports no memory, 1 GiB. The padding page comes on top."""
        if not self.attention.use_kernel:  # XLA's CPU client
            return CPU_CLIENT_KV_CACHE_MEMORY
        import torch_xla.core.xla_model as xm

        info = xm.get_memory_info(self.device)
        return int(info["bytes_limit"] * self.backend.options.hbm_memory_utilization) - info["bytes_used"]

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        super().allocate_kv_cache(num_blocks, block_size)
        self.runner.graphs.pad_slot = num_blocks * block_size  # the first slot of the padding page
        torch_xla.sync()

    def warm_up(self) -> None:
        before, runs_before, start = num_compiles(), num_graphs_run(), time.perf_counter()
        super().warm_up()
        self.num_warm_up_compiles = num_compiles() - before
        self.num_warm_up_graphs = num_graphs_run() - runs_before
        plan = self.runner.graphs.plan
        logger.info("XLA warm-up: %d graphs compiled in %.1f s (%d token buckets %s, %d request buckets %s)",
                    self.num_warm_up_compiles, time.perf_counter() - start, len(plan.token_buckets),
                    plan.token_buckets, len(plan.req_buckets), plan.req_buckets)
