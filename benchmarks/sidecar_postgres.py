"""The sidecar-on-PostgreSQL rows: 1, 2 and 3 sidecar replicas sharing one database, measured in the same run
and against the same PostgreSQL server as the Web3Signer peer (their baseline).

Selected with ``--targets ...,sidecar-postgres``; the harness calls :func:`measure_sidecar_on_postgres` after
every other system, with the run's PostgreSQL server (None when it could not be started). When the sidecar
cannot serve from PostgreSQL in this checkout, each row says "not available" with the reason, and the run
carries on.

What is measured, in order:

1. the PostgreSQL floor (:func:`measure_commits`): one row INSERTed with autocommit on one connection, i.e. one
   round trip to the server and one commit (a WAL flush), back to back;
2. for each replica count ``n`` (:func:`measure_replicas`): ``n`` fresh ``python -m sidecar serve --database-url
   URL`` processes on one database (:func:`replica_starter`), the same hot-path load as every other system
   (:mod:`benchmarks.scenarios`: unary with 64 in flight, batches of 100 with 8 in flight, one caller) with its
   lanes dealt round-robin over the replicas (:func:`benchmarks.load.drive_many`), the validators registered
   beforehand through the first replica (registration lives in the database, so every replica sees it). The
   CPU table gets each replica's CPU and the PostgreSQL server's (all its processes); a commit probe is taken
   right before the one-caller run, for its budget;
3. the import of the run's EIP-3076 file into a fresh database with ``python -m sidecar import FILE
   --database-url URL`` (and the export, verified), beside the Web3Signer peer's import of the same file.

The targets (:mod:`benchmarks.report`): batched decisions/s ≥ 5x the Web3Signer peer's; one caller's p50 ≤ 2x
(the empty server's one-caller p50, a local round trip, + the commit probe's p50). Notes at the end say how
throughput changed from 1 to 3 replicas and where the machine's CPU went meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    GENESIS_VALIDATORS_ROOT_HEX,
    REPO_ROOT,
    ServerProcess,
    ServerStartError,
    percentile,
    pubkeys,
    python_module_argv,
    register_validators,
    subprocess_env,
)
from benchmarks.load import ClosedLoop, LoadSummary, PidSource, drive_many
from benchmarks.postgres_server import PostgresServer
from benchmarks.report import POSTGRES_FLOOR, SIDECAR_POSTGRES, Cell, Results
from benchmarks.scenarios import (
    BATCH_SCENARIO,
    SINGLE_SCENARIO,
    UNARY_SCENARIO,
    InterchangeFile,
    KeyRanges,
    LoadPlan,
    Settings,
    attempt,
    batch_load,
    cpu_row,
    load_cell,
    measure_interchange,
    single_load,
    unary_load,
)
from benchmarks.targets import Target

TARGET = "sidecar-postgres"
REPLICAS = (1, 2, 3)
FIGURES = [
    "unary.calls_per_s", "unary.p50", "unary.p99", "batch.decisions_per_s", "batch.p99", "single.p50",
    "single.p99",
]  # fmt: skip
COMMIT_FIGURES = ["postgres.commit.p50", "postgres.commit.p99", "postgres.commit.rate"]
INTERCHANGE_FIGURES = ["import.s", "export.s"]
# The import and export are offline (no replica serving): they are recorded on the 1-replica row.
INTERCHANGE_SYSTEM = SIDECAR_POSTGRES[0]
PROBE_TABLE = "benchmark_commit_probe"  # a scratch table, dropped after each probe

ReplicaStarter = Callable[[int], Awaitable[list[ServerProcess]]]


def replica_starter(database_url: str, extra_args: Sequence[str] = ()) -> ReplicaStarter:
    """``start(n)``: ``n`` sidecar replicas serving ``database_url``, each on its own loopback port."""

    async def start(count: int) -> list[ServerProcess]:
        replicas: list[ServerProcess] = []
        try:
            for index in range(count):
                argv = python_module_argv(
                    "sidecar", "serve", "--database-url", database_url,
                    "--genesis-validators-root", GENESIS_VALIDATORS_ROOT_HEX, "--listen", "127.0.0.1:0",
                    *extra_args,
                )  # fmt: skip
                replicas.append(ServerProcess(argv, name=f"sidecar replica {index + 1}"))
                await replicas[-1].start(timeout_s=60)
        except BaseException:
            for replica in replicas:
                replica.kill()
            raise
        return replicas

    return start


def sidecar_unavailable_reason() -> str | None:
    """Why the sidecar cannot serve from PostgreSQL in this checkout, or None."""
    probe = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
    if probe.returncode != 0 or "--database-url" not in probe.stdout:
        return "`python -m sidecar serve` has no --database-url option in this checkout (no PostgreSQL backend)"
    return None


# --- the PostgreSQL floor ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitFigures:
    commits: int
    p50_s: float
    p99_s: float
    commits_per_s: float


def measure_commits(database_url: str, *, seconds: float, max_commits: int = 100_000) -> CommitFigures:
    """One-row INSERTs with autocommit on one connection, back to back for ``seconds``: each is one round trip
    and one commit, which PostgreSQL answers only once its WAL record is flushed (``synchronous_commit=on``).
    The scratch table is dropped afterwards."""
    import psycopg

    latencies: list[float] = []
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id bigserial PRIMARY KEY, at bigint)")
        try:
            started = time.perf_counter()
            deadline = started + seconds
            while len(latencies) < max_commits:
                before = time.perf_counter()
                if before >= deadline:
                    break
                connection.execute(f"INSERT INTO {PROBE_TABLE} (at) VALUES (%s)", (len(latencies),))
                latencies.append(time.perf_counter() - before)
            elapsed = time.perf_counter() - started
        finally:
            connection.execute(f"DROP TABLE IF EXISTS {PROBE_TABLE}")
    return CommitFigures(
        len(latencies),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        len(latencies) / elapsed if elapsed > 0 else 0.0,
    )


async def measure_commit_floor(results: Results, database_url: str, settings: Settings) -> None:
    floor = await asyncio.to_thread(measure_commits, database_url, seconds=settings.disk_seconds)
    note = f"{floor.commits:,} commits"
    results.record("postgres.commit.p50", POSTGRES_FLOOR, Cell(floor.p50_s, note=note))
    results.record("postgres.commit.p99", POSTGRES_FLOOR, Cell(floor.p99_s))
    results.record("postgres.commit.rate", POSTGRES_FLOOR, Cell(floor.commits_per_s))


# --- the replicas ------------------------------------------------------------------------------------------------


@dataclass
class ReplicaRun:
    """``n`` replicas on one database while their hot path is measured."""

    results: Results
    system: str
    replicas: list[ServerProcess]
    database_url: str
    settings: Settings
    keys: KeyRanges
    plan: LoadPlan
    database_pids: PidSource | None
    summaries: dict[str, LoadSummary] = field(default_factory=dict)

    async def drive(self, scenario: str, spec: ClosedLoop, procs: int) -> LoadSummary:
        """Registers ``spec``'s validators through the first replica, then drives ``spec`` over every replica and
        notes the CPU of client, replicas, PostgreSQL and everything else during it."""
        await register_validators(self.replicas[0].address, pubkeys(spec.first_validator, spec.validators))
        summary = await drive_many(
            [replica.address for replica in self.replicas],
            spec,
            procs=procs,
            server_pids=[replica.pid for replica in self.replicas],
            database_pids=self.database_pids,
        )
        self.results.cpu.append(cpu_row(self.system, scenario, spec, summary))
        self.summaries[scenario] = summary
        return summary


async def _unary(run: ReplicaRun) -> None:
    summary = await run.drive(UNARY_SCENARIO, unary_load(run.keys, run.settings), run.plan.unary_procs)
    run.results.record("unary.calls_per_s", run.system, load_cell(summary.calls_per_s, summary))
    run.results.record("unary.p50", run.system, load_cell(summary.p50_s, summary))
    run.results.record("unary.p99", run.system, load_cell(summary.p99_s, summary))


async def _batches(run: ReplicaRun) -> None:
    summary = await run.drive(BATCH_SCENARIO, batch_load(run.keys, run.settings), run.plan.batch_procs)
    run.results.record("batch.decisions_per_s", run.system, load_cell(summary.decisions_per_s, summary))
    run.results.record("batch.p99", run.system, load_cell(summary.p99_s, summary))


async def _single(run: ReplicaRun) -> None:
    # The commit this budget allows for, taken right before: the machine's other load drifts by the minute.
    probe = await asyncio.to_thread(measure_commits, run.database_url, seconds=run.settings.fsync_probe_s)
    run.results.record("probe.single.commit_p50", run.system, Cell(probe.p50_s, note=f"{probe.commits:,} commits"))
    summary = await run.drive(SINGLE_SCENARIO, single_load(run.keys, run.settings), 1)
    note = f"{summary.calls:,} calls, all to replica 1"
    run.results.record("single.p50", run.system, load_cell(summary.p50_s, summary, note=note))
    run.results.record("single.p99", run.system, load_cell(summary.p99_s, summary))


async def measure_replicas(
    results: Results,
    database_url: str,
    start_replicas: ReplicaStarter,
    settings: Settings,
    plan: LoadPlan,
    *,
    replicas: Sequence[int] = REPLICAS,
    database_pids: PidSource | None = None,
) -> None:
    """The hot-path figures of ``replicas`` sidecars on ``database_url`` for each count in ``replicas`` (fresh
    processes each time, one database throughout, disjoint validators), recorded on the rows
    ``SIDECAR_POSTGRES[n - 1]``; then a note on how throughput scaled and where the CPU went. ``database_pids``
    lists the database server's processes, for the CPU table."""
    keys = KeyRanges()
    runs: list[tuple[int, ReplicaRun]] = []
    steps: list[tuple[list[str], Callable[[ReplicaRun], Awaitable[None]]]] = [
        (["unary.calls_per_s", "unary.p50", "unary.p99"], _unary),
        (["batch.decisions_per_s", "batch.p99"], _batches),
        (["single.p50", "single.p99"], _single),
    ]
    for count in replicas:
        system = SIDECAR_POSTGRES[count - 1]
        print(f"  -- {count} replica{'s' if count > 1 else ''}", file=results.out, flush=True)
        try:
            servers = await start_replicas(count)
        except ServerStartError as error:
            results.not_available(FIGURES, system, str(error))
            continue
        run = ReplicaRun(results, system, servers, database_url, settings, keys, plan, database_pids)
        try:
            for figure_keys, step in steps:
                dead = [server for server in servers if not server.alive()]
                if dead:
                    reason = f"{dead[0].name} exited: {dead[0].last_words()}"
                    for key in figure_keys:
                        results.record(key, system, Cell(status="error", note=reason))
                    continue
                await attempt(results, figure_keys, system, functools.partial(step, run))
        finally:
            for server in servers:
                status = server.stop()
                if status not in (0, None):
                    results.note(f"{system}: {server.name} exit status {status} after SIGTERM")
        runs.append((count, run))
    for note in scaling_notes(runs):
        results.note(note)


def scaling_notes(runs: Sequence[tuple[int, ReplicaRun]]) -> list[str]:
    """How unary calls/s and batched decisions/s changed with the replica count, and where the machine's CPU went
    during each run (the replicas, PostgreSQL, the load generator, everything else): one note per load shape."""
    cores = os.cpu_count() or 1
    notes = []
    for scenario, unit in ((UNARY_SCENARIO, "calls/s"), (BATCH_SCENARIO, "decisions/s")):
        measured = [(count, run.summaries[scenario]) for count, run in runs if scenario in run.summaries]
        if not measured:
            continue
        figures = []
        for count, summary in measured:
            replicas, database = summary.server_cores or 0.0, summary.database_cores or 0.0
            others = summary.other_cores or 0.0
            busy = replicas + database + summary.client_cores + others
            figures.append(
                f"{count}: {summary.decisions_per_s:,.0f} {unit} (CPU: replicas {replicas:.2f}, PostgreSQL "
                f"{database:.2f}, load generator {summary.client_cores:.2f}, other load {others:.2f}; {busy:.2f} "
                f"of {cores} cores busy)"
            )
        first, last = measured[0][1].decisions_per_s, measured[-1][1].decisions_per_s
        growth = f" (x{last / first:.2f} from {measured[0][0]} to {measured[-1][0]})" if first > 0 else ""
        notes.append(f"sidecar on PostgreSQL, {scenario}, by replicas{growth}: " + "; ".join(figures))
    return notes


# --- the import --------------------------------------------------------------------------------------------------


class SidecarPostgresImport(Target):
    """The offline import and export of ``python -m sidecar`` on a fresh database of the run's server, for
    :func:`benchmarks.scenarios.measure_interchange`."""

    name = "sidecar-postgres-import"
    system = INTERCHANGE_SYSTEM
    is_baseline = False
    cli_timeout_s = 900.0  # like the Web3Signer peer's: a slow import is a figure, not a failure

    def __init__(self, postgres: PostgresServer) -> None:
        self.postgres = postgres

    def database_url(self) -> str:
        return self.postgres.url("sidecar_import")

    def import_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return python_module_argv(
            "sidecar", "import", str(file), "--database-url", self.database_url(),
            "--genesis-validators-root", GENESIS_VALIDATORS_ROOT_HEX,
        )  # fmt: skip

    def export_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return python_module_argv("sidecar", "export", str(file), "--database-url", self.database_url())

    async def prepare_data_dir(self, data_dir: Path) -> None:
        # The database is created empty; the import creates the schema and pins the genesis validators root.
        data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.postgres.create_database, "sidecar_import")


# --- the whole section -------------------------------------------------------------------------------------------


async def measure_sidecar_on_postgres(
    results: Results,
    postgres: PostgresServer | None,
    settings: Settings,
    work: Path,
    plan: LoadPlan,
    document: InterchangeFile,
) -> None:
    """The PostgreSQL floor, the rows for 1, 2 and 3 replicas and the import, or "not available" on each row
    with the reason."""
    reason = (
        "PostgreSQL could not be started (see the notes)" if postgres is None else sidecar_unavailable_reason()
    )
    if reason is not None:
        for system in SIDECAR_POSTGRES:
            results.not_available(
                FIGURES + (INTERCHANGE_FIGURES if system == INTERCHANGE_SYSTEM else []), system, reason
            )
        return
    assert postgres is not None
    database_url = await asyncio.to_thread(postgres.create_database, "sidecar")
    await attempt(
        results, COMMIT_FIGURES, POSTGRES_FLOOR, lambda: measure_commit_floor(results, database_url, settings)
    )
    await measure_replicas(
        results, database_url, replica_starter(database_url), settings, plan, database_pids=postgres.pids
    )
    target = SidecarPostgresImport(postgres)
    await attempt(
        results,
        INTERCHANGE_FIGURES,
        target.system,
        lambda: measure_interchange(results, target, work, settings, document),
    )
