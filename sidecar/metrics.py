"""Prometheus metrics, in a registry of their own per server (so tests can run several servers in one process).

Decision counts are the hot path: they are plain integers bumped in the serving thread and turned into the
`slashing_sidecar_decisions_total` counter only when scraped, instead of a locked client-library counter per
decision. No metric has a per-pubkey label.
"""

from __future__ import annotations

import time
from collections import Counter as _Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.rules import Reason

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _DecisionCollector(Collector):
    def __init__(self, tally: _Tally[tuple[str, Reason]]) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "slashing_sidecar_decisions",
            "Signing decisions recorded, by message kind, verdict and reason.",
            labels=["kind", "verdict", "reason"],
        )
        for (kind, reason), count in sorted(self._tally.items()):
            verdict = "allowed" if reason.allows else "refused"
            family.add_metric([kind, verdict, reason.name.lower()], count)
        yield family


class Metrics:
    """Every metric the sidecar exports. Callables given to `bind_*` are read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decision_tally: _Tally[tuple[str, Reason]] = _Tally()
        self.registry.register(_DecisionCollector(self.decision_tally))
        r = self.registry
        self.decision_seconds = Histogram(
            "slashing_sidecar_decision_seconds",
            "Time from request received to reply ready, per RPC (a batch counts once).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "slashing_sidecar_fsync_seconds", "Duration of each log fsync.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.group_commit_records = Histogram(
            "slashing_sidecar_group_commit_records",
            "Log records made durable by one fsync.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.log_bytes_written = Counter(
            "slashing_sidecar_log_written_bytes", "Bytes appended to the decision log.", registry=r
        )
        self.checkpoint_seconds = Histogram(
            "slashing_sidecar_checkpoint_seconds",
            "Time to take and write one checkpoint.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.checkpoint_age_seconds = Gauge(
            "slashing_sidecar_checkpoint_age_seconds",
            "Seconds since the newest checkpoint was written (since start when there is none).",
            registry=r,
        )
        self.validators = Gauge("slashing_sidecar_validators", "Registered validators.", registry=r)
        self.recovery_seconds = Gauge(
            "slashing_sidecar_recovery_seconds", "Time the last start took to recover its state.", registry=r
        )
        self.replayed_records = Gauge(
            "slashing_sidecar_recovery_replayed_records", "Log records replayed at the last start.", registry=r
        )
        self.log_healthy = Gauge(
            "slashing_sidecar_log_healthy", "1 while the decision log can be made durable, else 0.", registry=r
        )
        self.import_validators = Counter(
            "slashing_sidecar_import_validators",
            "Validators read from interchange documents being imported (import progress).",
            registry=r,
        )
        self.imports = Counter(
            "slashing_sidecar_imports", "Interchange imports, by outcome.", ["outcome"], registry=r
        )
        self.log_healthy.set(0)

    def bind_state(
        self,
        validators: Callable[[], int],
        last_checkpoint_unix: Callable[[], float | None],
        started_unix: float,
    ) -> None:
        self.validators.set_function(lambda: float(validators()))

        def age() -> float:
            last = last_checkpoint_unix()
            return time.time() - (last if last is not None else started_unix)

        self.checkpoint_age_seconds.set_function(age)

    def observe_fsync(self, seconds: float, records: int, size: int) -> None:
        """Hook for the log's flusher thread."""
        self.fsync_seconds.observe(seconds)
        self.group_commit_records.observe(records)
        self.log_bytes_written.inc(size)
