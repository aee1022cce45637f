"""Prometheus metrics (vLLM's production set, named `octavo:` + vLLM's suffixes) and the
periodic stats log line.

Engine-side state (running/waiting requests, KV-cache usage, preemptions, prefix-cache
queries and hits) is read from the engine at scrape time; per-request numbers (tokens, TTFT,
TPOT, inter-token latency, end-to-end latency, finish reasons) are recorded by the server as
requests finish (server/tracking.py). Every series carries the `engine` label of the engine
that served it, as vLLM's: "0", or each data-parallel replica's index. Each app has its own
registry, so several servers can live in one process (tests).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger("octavo.server")

PREFIX = "octavo:"
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
TPOT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
LATENCY_BUCKETS = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                   50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
FINISH_REASONS = ("stop", "length", "abort", "error")


def _tokens_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's build_1_2_5_buckets)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if v > max_value:
                return out
            out.append(float(v))
        exp += 1


class _EngineCollector:
    """Gauges and counters read from the engines on every scrape, one series per engine."""

    def __init__(self, engine, model_name: str):
        self.engine = engine  # the AsyncLLM (or data-parallel front); `.engines` are its cores
        self.model_name = model_name

    def collect(self):
        families = {}

        def add(cls, name: str, doc: str, index: int, value: float) -> None:
            if name not in families:
                families[name] = cls(PREFIX + name, doc, labels=["model_name", "engine"])
            families[name].add_metric([self.model_name, str(index)], value)

        for i, core in enumerate(self.engine.engines):
            stats, kv = core.stats(), core.kv
            hit_rate = stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0
            add(GaugeMetricFamily, "num_requests_running", "Requests in the running batch.", i, stats.num_running)
            add(GaugeMetricFamily, "num_requests_waiting", "Requests waiting to be scheduled.", i,
                stats.num_waiting)
            add(GaugeMetricFamily, "kv_cache_usage_perc", "KV-cache usage (1 = full).", i, stats.kv_usage)
            add(GaugeMetricFamily, "num_kv_blocks_used", "KV-cache blocks in use.", i,
                kv.num_blocks - kv.num_free_blocks)
            add(GaugeMetricFamily, "num_kv_blocks_total", "KV-cache blocks in all.", i, kv.num_blocks)
            add(GaugeMetricFamily, "prefix_cache_hit_rate", "Prefix-cache hits / queries (tokens) since start.", i,
                hit_rate)
            add(CounterMetricFamily, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", i,
                stats.prefix_queries)
            add(CounterMetricFamily, "prefix_cache_hits", "Prompt tokens found in the prefix cache.", i,
                stats.prefix_hits)
            add(CounterMetricFamily, "num_preemptions", "Preemptions (recompute).", i, stats.num_preemptions)
        yield from families.values()


class RequestMetrics:
    """The per-request series of one engine (its `engine` label)."""

    def __init__(self, server: ServerMetrics, labels: dict[str, str]):
        self.server = server
        f = server.families
        self.prompt_tokens = f["prompt_tokens"].labels(**labels)
        self.generation_tokens = f["generation_tokens"].labels(**labels)
        self.success = {r: f["request_success"].labels(**labels, finished_reason=r) for r in FINISH_REASONS}
        for name in ("request_prompt_tokens", "request_generation_tokens", "request_params_n",
                     "request_params_max_tokens", "ttft", "tpot", "itl", "e2e", "queue_time", "inference_time",
                     "prefill_time", "decode_time"):
            setattr(self, name, f[name].labels(**labels))

    def add_prompt_tokens(self, n: int) -> None:
        self.prompt_tokens.inc(n)
        self.server.total_prompt_tokens += n

    def add_generation_tokens(self, n: int) -> None:
        if n:
            self.generation_tokens.inc(n)
            self.server.total_generation_tokens += n

    def observe_finished(self, *, finish_reasons: list[str], prompt_tokens: int, generation_tokens: int,
                         max_output_len: int, times: dict[str, float | None], now: float,
                         n: int, max_tokens: int | None) -> None:
        """`times` holds the engine's monotonic arrival/first-token(/first-scheduled) times."""
        for reason in finish_reasons:
            self.success.get(reason, self.success["stop"]).inc()
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
        self.request_params_n.observe(n)
        if max_tokens is not None:
            self.request_params_max_tokens.observe(max_tokens)
        arrival, first = times.get("arrival_time"), times.get("first_token_time")
        scheduled = times.get("first_scheduled_time")
        if arrival is not None:
            self.e2e.observe(max(now - arrival, 0.0))
        if arrival is not None and first is not None:
            self.ttft.observe(max(first - arrival, 0.0))
            self.decode_time.observe(max(now - first, 0.0))
            if max_output_len > 1:
                self.tpot.observe(max(now - first, 0.0) / (max_output_len - 1))
        if scheduled is not None:  # only when the engine reports it
            if arrival is not None:
                self.queue_time.observe(max(scheduled - arrival, 0.0))
            self.inference_time.observe(max(now - scheduled, 0.0))
            if first is not None:
                self.prefill_time.observe(max(first - scheduled, 0.0))


class ServerMetrics:
    """The registry: the engines' collector, the per-request families, and per engine their
    labelled series (`for_engine`)."""

    def __init__(self, engine, model_name: str, max_model_len: int):
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        names = ["model_name", "engine"]
        reg = self.registry
        self.registry.register(_EngineCollector(engine, model_name))

        def counter(name, doc, extra=()):
            return Counter(PREFIX + name, doc, names + list(extra), registry=reg)

        def histogram(name, doc, buckets):
            return Histogram(PREFIX + name, doc, names, buckets=buckets, registry=reg)

        token_buckets = _tokens_buckets(max_model_len)
        self.families = {
            "prompt_tokens": counter("prompt_tokens", "Prompt tokens processed."),
            "generation_tokens": counter("generation_tokens", "Generation tokens produced."),
            "request_success": counter("request_success", "Finished requests by finish reason.", ["finished_reason"]),
            "request_prompt_tokens": histogram("request_prompt_tokens", "Prompt tokens per request.", token_buckets),
            "request_generation_tokens": histogram("request_generation_tokens", "Generated tokens per request.",
                                                   token_buckets),
            "request_params_n": histogram("request_params_n", "The n parameter of requests.", [1, 2, 5, 10, 20]),
            "request_params_max_tokens": histogram("request_params_max_tokens", "max_tokens of requests.",
                                                   token_buckets),
            "ttft": histogram("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS),
            "tpot": histogram("time_per_output_token_seconds", "Mean time per output token after the first.",
                              TPOT_BUCKETS),
            "itl": histogram("inter_token_latency_seconds", "Time between streamed tokens.", TPOT_BUCKETS),
            "e2e": histogram("e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS),
            "queue_time": histogram("request_queue_time_seconds", "Time waiting before first scheduled.",
                                    LATENCY_BUCKETS),
            "inference_time": histogram("request_inference_time_seconds", "Time from first scheduled to finish.",
                                        LATENCY_BUCKETS),
            "prefill_time": histogram("request_prefill_time_seconds", "Time from first scheduled to first token.",
                                      LATENCY_BUCKETS),
            "decode_time": histogram("request_decode_time_seconds", "Time from first token to finish.",
                                     LATENCY_BUCKETS),
        }
        self._engines: dict[int, RequestMetrics] = {}
        # Plain totals for the stats log line.
        self.total_prompt_tokens = 0
        self.total_generation_tokens = 0
        for i in range(len(engine.engines)):  # every engine's series exist from the start
            self.for_engine(i)

    def for_engine(self, index: int) -> RequestMetrics:
        if index not in self._engines:
            self._engines[index] = RequestMetrics(self, {"model_name": self.model_name, "engine": str(index)})
        return self._engines[index]


class StatsLogger:
    """Logs throughput and engine state every `interval` seconds while there is activity."""

    def __init__(self, metrics: ServerMetrics, engine, interval: float = 10.0):
        self.metrics = metrics
        self.engine = engine
        self.interval = interval
        self._last = (time.monotonic(), 0, 0, 0, 0)
        self._idle_logged = False

    def line(self) -> str | None:
        now = time.monotonic()
        stats = _summed(core.stats() for core in self.engine.engines)
        t0, p0, g0, q0, h0 = self._last
        p1, g1 = self.metrics.total_prompt_tokens, self.metrics.total_generation_tokens
        q1, h1 = stats.prefix_queries, stats.prefix_hits
        self._last = (now, p1, g1, q1, h1)
        busy = p1 > p0 or g1 > g0 or stats.num_running or stats.num_waiting
        if not busy and self._idle_logged:
            return None
        self._idle_logged = not busy
        dt = max(now - t0, 1e-9)
        hit_rate = (h1 - h0) / (q1 - q0) if q1 > q0 else (h1 / q1 if q1 else 0.0)
        return (f"Avg prompt throughput: {(p1 - p0) / dt:.1f} tokens/s, "
                f"Avg generation throughput: {(g1 - g0) / dt:.1f} tokens/s, "
                f"Running: {stats.num_running} reqs, Waiting: {stats.num_waiting} reqs, "
                f"KV cache usage: {100 * stats.kv_usage:.1f}%, Prefix cache hit rate: {100 * hit_rate:.1f}%")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                text = self.line()
            except Exception:  # never let the logger take the server down
                logger.exception("stats logging failed")
                continue
            if text:
                logger.info(text)


def _summed(all_stats):
    """One SchedulerStats over every engine (the KV usage is their mean)."""
    all_stats = list(all_stats)
    total = dataclasses.replace(all_stats[0])
    for stats in all_stats[1:]:
        for f in dataclasses.fields(stats):
            setattr(total, f.name, getattr(total, f.name) + getattr(stats, f.name))
    total.kv_usage /= len(all_stats)
    return total
