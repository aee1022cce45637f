"""The XLA worker: the core's torch worker with the static-shape runner, a padding page in
every KV cache, KV memory from the device, and a warm-up that compiles every graph."""
from __future__ import annotations

import logging
import time

import torch_xla
from tqdm import tqdm

from octavo.backend import TorchWorker
from octavo_tpu.graphs import num_compiles, num_graphs_run
from octavo_tpu.runner import XlaModelRunner

logger = logging.getLogger("octavo")

CPU_CLIENT_KV_CACHE_MEMORY = 1 << 30  # bytes: XLA's CPU client reports no memory to size from


class XlaWorker(TorchWorker):
    runner_class = XlaModelRunner

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compile_times: list[tuple[str, float]] = []  # warm-up: (graph, seconds)
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
        """Compile every graph of the plan, with a progress bar; serving compiles nothing."""
        plan = self.runner.plan
        before, runs_before, start = num_compiles(), num_graphs_run(), time.perf_counter()
        last = start
        with tqdm(total=plan.num_graphs, desc="compiling XLA graphs", unit="graph") as bar:
            for label in self.runner.warm_up_steps(self.config.block_size):
                now = time.perf_counter()
                self.compile_times.append((label, now - last))
                last = now
                bar.set_postfix_str(label)
                bar.update()
        self.num_warm_up_compiles = num_compiles() - before
        self.num_warm_up_graphs = num_graphs_run() - runs_before
        logger.info("XLA warm-up: %d graphs compiled in %.1f s (%d token buckets %s, %d request buckets %s)",
                    self.num_warm_up_compiles, time.perf_counter() - start, len(plan.token_buckets),
                    plan.token_buckets, len(plan.req_buckets), plan.req_buckets)
