"""Per-stream and aggregate metrics, owned by the core.

`StreamClock` measures one stream; `GatewayMetrics` aggregates every stream of
a gateway, both as Prometheus metrics (its own registry, so several gateways
can live in one process) and as a snapshot for the metrics RPC.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamgate.contract import Metrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_RATE_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
#: Distinct model labels kept before the rest are counted as "other".
MAX_MODEL_LABELS = 64


class StreamClock:
    """Times one stream: start, first token, end."""

    __slots__ = ("chunks", "first_token", "start")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_token: float | None = None
        self.chunks = 0

    def chunk(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        self.chunks += 1

    def finish(self, completion_tokens: int) -> Metrics:
        end = time.perf_counter()
        ttft = (self.first_token - self.start) if self.first_token is not None else 0.0
        generating = end - self.first_token if self.first_token is not None else 0.0
        # Tokens after the first, over the time they took; a one-token answer has no rate.
        rate = (completion_tokens - 1) / generating if completion_tokens > 1 and generating > 0 else 0.0
        return Metrics(
            ttft_ms=round(ttft * 1000, 3),
            duration_ms=round((end - self.start) * 1000, 3),
            tokens_per_second=round(rate, 3),
            chunks=self.chunks,
        )


@dataclass
class Snapshot:
    """The aggregate metrics the metrics RPC returns."""

    active_streams: int
    streams_started: int
    streams_rejected: int
    outcomes: dict[tuple[str, str], int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    tokens_per_second_p50: float
    draining: bool = False


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    recent: int = 1024

    def __post_init__(self) -> None:
        r = self.registry
        self.active = Gauge("streamgate_active_streams", "Streams open now.", registry=r)
        self.started = Counter("streamgate_streams_started", "Streams admitted.", registry=r)
        self.rejected = Counter(
            "streamgate_streams_rejected", "Streams refused before they started.", ["code"], registry=r
        )
        self.finished = Counter(
            "streamgate_streams_finished",
            "Streams ended, by model and outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "streamgate_upstream_retries",
            "Tries of an upstream after a failure before the first token.",
            ["kind"],
            registry=r,
        )
        self.tokens = Counter("streamgate_tokens", "Tokens, by model and kind.", ["model", "kind"], registry=r)
        self.cost = Counter("streamgate_cost_usd", "Cost in US dollars, by model.", ["model"], registry=r)
        self.ttft = Histogram(
            "streamgate_time_to_first_token_seconds",
            "Time to first token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "streamgate_stream_duration_seconds",
            "Whole-stream duration.",
            ["model"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.rate = Histogram(
            "streamgate_tokens_per_second",
            "Completion tokens per second of each stream.",
            ["model"],
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self._models: set[str] = set()
        self._outcomes: dict[tuple[str, str], int] = {}
        self._ttfts: deque[float] = deque(maxlen=self.recent)
        self._rates: deque[float] = deque(maxlen=self.recent)
        self._started = self._rejected = self._active = 0
        self._prompt_tokens = self._completion_tokens = 0
        self._cost = 0.0

    def _label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return "other"

    def stream_started(self) -> None:
        self._started += 1
        self._active += 1
        self.started.inc()
        self.active.inc()

    def stream_rejected(self, code: str) -> None:
        self._rejected += 1
        self.rejected.labels(code).inc()

    def stream_finished(
        self,
        model: str,
        outcome: str,
        metrics: Metrics,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None,
    ) -> None:
        label = self._label(model)
        self._active -= 1
        self.active.dec()
        key = (label, outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        self.finished.labels(label, outcome).inc()
        self._prompt_tokens += prompt_tokens
        self._completion_tokens += completion_tokens
        self.tokens.labels(label, "prompt").inc(prompt_tokens)
        self.tokens.labels(label, "completion").inc(completion_tokens)
        if cost_usd:
            self._cost += cost_usd
            self.cost.labels(label).inc(cost_usd)
        self.duration.labels(label).observe(metrics.duration_ms / 1000)
        if metrics.chunks:
            self._ttfts.append(metrics.ttft_ms)
            self.ttft.labels(label).observe(metrics.ttft_ms / 1000)
        if metrics.tokens_per_second:
            self._rates.append(metrics.tokens_per_second)
            self.rate.labels(label).observe(metrics.tokens_per_second)

    def snapshot(self, draining: bool = False) -> Snapshot:
        ttfts = list(self._ttfts)
        return Snapshot(
            active_streams=self._active,
            streams_started=self._started,
            streams_rejected=self._rejected,
            outcomes=dict(self._outcomes),
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            cost_usd=self._cost,
            ttft_ms_p50=_percentile(ttfts, 0.5),
            ttft_ms_p99=_percentile(ttfts, 0.99),
            tokens_per_second_p50=_percentile(list(self._rates), 0.5),
            draining=draining,
        )
