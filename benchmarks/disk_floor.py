"""The disk floor: what one durable append costs on this filesystem, with nothing else around it.

Two measurements, in a fresh temporary directory on the same filesystem as the servers' data:

- one ~100-byte record: ``os.write`` (append) then ``os.fdatasync``, repeated: the latency of a single durable
  decision if it were free to decide;
- a batch of 100 such records in one write, then one ``fdatasync``: what group commit buys.

The file grows with every append, so each ``fdatasync`` also flushes the new size, as a log's append would
(a log that preallocates its segments can do slightly better). Run alone with
``python -m benchmarks.disk_floor --dir DIR``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import percentile

RECORD_BYTES = 100
BATCH_RECORDS = 100


@dataclass
class SyncFigures:
    records_per_append: int
    appends: int
    seconds: float
    latencies_s: list[float]

    @property
    def appends_per_s(self) -> float:
        return self.appends / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_s(self) -> float:
        return self.appends_per_s * self.records_per_append

    @property
    def p50_s(self) -> float:
        return percentile(self.latencies_s, 0.50)

    @property
    def p90_s(self) -> float:
        return percentile(self.latencies_s, 0.90)

    @property
    def p99_s(self) -> float:
        return percentile(self.latencies_s, 0.99)

    @property
    def max_s(self) -> float:
        return max(self.latencies_s, default=float("nan"))


@dataclass
class DiskFloor:
    directory: Path
    single: SyncFigures
    batch: SyncFigures


def measure_appends(directory: Path, *, records_per_append: int, seconds: float, max_appends: int) -> SyncFigures:
    """Appends ``records_per_append`` records per write and fdatasyncs, for ``seconds`` or ``max_appends``."""
    record = os.urandom(RECORD_BYTES - 4).hex().encode()[: RECORD_BYTES - 1] + b"\n"
    payload = record * records_per_append
    with tempfile.TemporaryDirectory(prefix="disk-floor-", dir=directory) as scratch:
        fd = os.open(Path(scratch) / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(5):  # create the file's first blocks outside the measurement
                os.write(fd, payload)
                os.fdatasync(fd)
            latencies: list[float] = []
            started = time.perf_counter()
            deadline = started + seconds
            while len(latencies) < max_appends:
                before = time.perf_counter()
                os.write(fd, payload)
                os.fdatasync(fd)
                after = time.perf_counter()
                latencies.append(after - before)
                if after >= deadline:
                    break
            elapsed = time.perf_counter() - started
        finally:
            os.close(fd)
    return SyncFigures(records_per_append, len(latencies), elapsed, latencies)


def measure(directory: Path, *, seconds: float) -> DiskFloor:
    """Both figures, each given about ``seconds``."""
    directory.mkdir(parents=True, exist_ok=True)
    single = measure_appends(directory, records_per_append=1, seconds=seconds, max_appends=100_000)
    batch = measure_appends(directory, records_per_append=BATCH_RECORDS, seconds=seconds, max_appends=100_000)
    return DiskFloor(directory, single, batch)


def describe(figures: SyncFigures) -> str:
    return (
        f"{figures.records_per_append} record(s) per fdatasync: {figures.appends_per_s:,.0f} fdatasyncs/s "
        f"({figures.records_per_s:,.0f} records/s), p50 {figures.p50_s * 1e6:,.0f} µs, "
        f"p90 {figures.p90_s * 1e6:,.0f} µs, p99 {figures.p99_s * 1e6:,.0f} µs, max {figures.max_s * 1e6:,.0f} µs "
        f"over {figures.appends:,} appends"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.disk_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="a directory on the data's filesystem")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args(argv)
    floor = measure(args.dir, seconds=args.seconds)
    print(describe(floor.single))
    print(describe(floor.batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
