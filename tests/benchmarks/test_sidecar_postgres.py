"""The sidecar-on-PostgreSQL rows are measured for real: replicas of `python -m sidecar serve --database-url` on a
real PostgreSQL server, driven by the load generator over all their addresses for a very short window. What is
checked is the plumbing (every row gets every figure, every call allowed, the CPU table and the target rules
fed), never how fast anything was."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path

import pytest

from benchmarks import postgres_server
from benchmarks.common import ServerProcess
from benchmarks.report import EMPTY, POSTGRES_FLOOR, SIDECAR_POSTGRES, WEB3SIGNER, Cell, Results
from benchmarks.scenarios import QUICK, InterchangeFile, LoadPlan, measure_interchange
from benchmarks.sidecar_postgres import (
    COMMIT_FIGURES,
    FIGURES,
    INTERCHANGE_SYSTEM,
    SidecarPostgresImport,
    measure_commit_floor,
    measure_replicas,
    replica_starter,
    sidecar_unavailable_reason,
)

pytest.importorskip("grpc")

# Windows far shorter than --quick's: enough calls for a percentile, not enough to mean anything.
TINY = dataclasses.replace(QUICK, warmup_s=0.1, duration_s=0.3, single_s=0.3, fsync_probe_s=0.1, disk_seconds=0.1)
SCENARIOS_PER_RUN = 3  # unary, batches, one caller


@pytest.fixture(autouse=True)
def _sidecar_serves_postgres() -> None:
    reason = sidecar_unavailable_reason()
    if reason is not None:
        pytest.fail(reason)


def _results() -> Results:
    results = Results(mode=TINY.mode, out=io.StringIO())
    # The target rules' baselines from other systems, given instead of measured: only their presence matters.
    results.record("single.p50", EMPTY, Cell(0.001))
    results.record("batch.decisions_per_s", WEB3SIGNER, Cell(100.0))
    return results


def test_one_and_two_replicas_record_every_figure_and_the_targets_give_verdicts(
    benchmark_postgres: postgres_server.PostgresServer,
) -> None:
    url = benchmark_postgres.create_database("sidecar_replicas_test")
    results = _results()
    started: list[ServerProcess] = []
    start = replica_starter(url)

    async def start_and_keep(count: int) -> list[ServerProcess]:
        replicas = await start(count)
        started.extend(replicas)
        return replicas

    async def measure() -> None:
        await measure_commit_floor(results, url, TINY)
        await measure_replicas(
            results,
            url,
            start_and_keep,
            TINY,
            LoadPlan(1, 1),
            replicas=(1, 2),
            database_pids=benchmark_postgres.pids,
        )

    try:
        asyncio.run(measure())
    finally:
        for replica in started:
            replica.kill()
            assert replica.process is not None
            for pipe in (replica.process.stdout, replica.process.stderr):
                if pipe is not None:
                    pipe.close()  # the drain threads have read to EOF; an unclosed pipe is a ResourceWarning

    assert len(started) == 3
    for key in COMMIT_FIGURES:
        assert results.cells[(key, POSTGRES_FLOOR)].usable, results.cells[(key, POSTGRES_FLOOR)]
    for replicas, system in zip((1, 2), SIDECAR_POSTGRES, strict=False):
        for key in FIGURES:
            cell = results.cells[(key, system)]
            assert cell.usable, (system, key, cell)  # "ok": every call answered and ALLOWED
        batch = results.row("batch.decisions_per_s", system)
        single = results.row("single.p50", system)
        assert batch.verdict is not None and batch.verdict.outcome in ("pass", "FAIL")
        assert "Web3Signer" in batch.verdict.target
        assert single.verdict is not None and single.verdict.outcome in ("pass", "FAIL")
        assert single.baseline is not None and "commit" in single.baseline.label
        assert batch.vs_peer is not None  # the "x peer" column is the Web3Signer peer's
        assert results.row("unary.calls_per_s", system).verdict is None  # the local sidecar's target: not theirs
        cpu = [row for row in results.cpu if row.system == system]
        assert len(cpu) == SCENARIOS_PER_RUN
        assert all(row.database_cores is not None for row in cpu)
        assert all(len(row.server_cores_each) == (replicas if replicas > 1 else 0) for row in cpu)
    assert not any(system == SIDECAR_POSTGRES[2] for _, system in results.cells)
    assert sum(note.startswith("sidecar on PostgreSQL, ") and "by replicas" in note for note in results.notes) == 2
    assert "| PostgreSQL cores |" in results.markdown()


def test_the_import_and_export_run_on_a_fresh_database(
    benchmark_postgres: postgres_server.PostgresServer, tmp_path: Path
) -> None:
    results = _results()
    document = InterchangeFile(tmp_path, 20)
    target = SidecarPostgresImport(benchmark_postgres)
    asyncio.run(measure_interchange(results, target, tmp_path / "work", TINY, document))
    for key in ("import.s", "export.s"):
        cell = results.cells[(key, INTERCHANGE_SYSTEM)]
        assert cell.usable, cell  # the export was re-read and held all 20 keys
