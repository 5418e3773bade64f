"""Prometheus metrics, in a registry of their own per server (so tests can run several servers in one process).

Decision counts are the hot path: they are plain integers bumped in the serving thread and turned into the
`slashing_sidecar_decisions_total` counter only when scraped, instead of a locked client-library counter per
decision. Every `(kind, verdict, reason)` a decision can have is exposed from the start, at 0: Prometheus sees a
series that first appears at 1 as new, not as a step from 0, so `increase()` over it, and the alert on the first
double vote, would miss that first one. Reasons are spelled as `sidecar.vocabulary` says. No metric has a
per-pubkey label.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter as _Tally
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.rules import Reason
from sidecar.vocabulary import decision_series, spelling, verdict

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
        counts = dict.fromkeys(decision_series(), 0)
        counts.update(self._tally)
        for (kind, reason), count in sorted(counts.items()):
            family.add_metric([kind, verdict(reason), spelling(reason)], count)
        yield family


def _filesystem_bytes(directory: Path, free: bool) -> float:
    """Bytes available to the sidecar (not root's reserve) or in all, on the filesystem holding `directory`."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return math.nan  # the directory is gone or unreadable: no number rather than a wrong one
    return float((stat.f_bavail if free else stat.f_blocks) * stat.f_frsize)


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
        for outcome in ("imported", "refused"):
            self.imports.labels(outcome)  # at 0 from the start, so the first failed import is an increase
        self.log_failures = Counter(
            "slashing_sidecar_log_failures",
            "Times the decision log could not be made durable (each one refused every signing call until healed).",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "slashing_sidecar_checkpoint_failures", "Scheduled checkpoints that failed.", registry=r
        )
        self.checkpoint_interval_seconds = Gauge(
            "slashing_sidecar_checkpoint_interval_seconds",
            "The configured --checkpoint-interval (0: no scheduled checkpoints).",
            registry=r,
        )
        self.serving = Gauge(
            "slashing_sidecar_serving", "1 while the gRPC health status is SERVING, else 0.", registry=r
        )
        self.data_dir_free_bytes = Gauge(
            "slashing_sidecar_data_dir_free_bytes",
            "Bytes available to the sidecar on the filesystem of its data directory.",
            registry=r,
        )
        self.data_dir_size_bytes = Gauge(
            "slashing_sidecar_data_dir_size_bytes",
            "Size in bytes of the filesystem of the data directory.",
            registry=r,
        )
        ProcessCollector(registry=r)  # process_start_time_seconds, memory, CPU, open files
        self.log_healthy.set(0)

    def bind_server(self, data_dir: Path | None, checkpoint_interval: float, serving: Callable[[], bool]) -> None:
        """What the server knows before recovery: its configuration and its health status (no data directory
        gauges for a shared database)."""
        self.checkpoint_interval_seconds.set(checkpoint_interval)
        self.serving.set_function(lambda: 1.0 if serving() else 0.0)
        if data_dir is None:
            return
        self.data_dir_free_bytes.set_function(lambda: _filesystem_bytes(data_dir, free=True))
        self.data_dir_size_bytes.set_function(lambda: _filesystem_bytes(data_dir, free=False))

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
