"""Figures, their baselines and targets, and the Markdown report.

A figure is one number measured for one *system* (the empty server, the SQLite peer, the sidecar, or a floor:
the disk, JSON). Every row of the report puts it next to a baseline measured in the same run, as a ratio
(``value ÷ baseline``: above 1 means more calls/s, or a longer time), and, for the sidecar, next to the SQLite
peer. Where the project's issue sets a target, the verdict column says whether this system meets it; for the
peer the verdict is informative (the targets are the sidecar's).

The durable empty server (the empty server plus a group-committed fdatasync per decision) is measured on the hot
path only; its verdicts are informative too, and the sidecar's hot-path rows are also put next to it: what the
sidecar's own logic costs on top of durability.

The sidecar on PostgreSQL (1, 2 and 3 replicas on one database) has targets of its own, against the Web3Signer
peer and the PostgreSQL floor of the same run (a one-row INSERT and its commit): batched decisions/s ≥ 5x the
peer's, and the unary p50 of one caller ≤ 2x (one local round trip + one commit). The local sidecar's targets
are not applied to those rows; their "x peer" column is the Web3Signer peer, the local sidecar's the SQLite
peer.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TextIO

EMPTY = "empty server"
PEER = "SQLite peer"
SIDECAR = "sidecar"
DISK = "disk floor"
JSON_FLOOR = "JSON floor"
DURABLE_EMPTY = "durable empty server"  # the empty server plus group-committed fdatasyncs: durability's own cost
WEB3SIGNER = "Web3Signer peer"  # Web3Signer's design on PostgreSQL: the baseline of the sidecar's PostgreSQL rows
POSTGRES_FLOOR = "PostgreSQL floor"  # one-row autocommit INSERTs on the run's PostgreSQL server, one connection
# The sidecar on PostgreSQL with 1, 2 and 3 replicas sharing one database (benchmarks/sidecar_postgres.py).
SIDECAR_POSTGRES = tuple(f"sidecar on PostgreSQL, {n} replica{'s' if n > 1 else ''}" for n in (1, 2, 3))
# The order of rows: floors, then baselines first.
SYSTEMS = (DISK, JSON_FLOOR, POSTGRES_FLOOR, EMPTY, DURABLE_EMPTY, PEER, WEB3SIGNER, SIDECAR, *SIDECAR_POSTGRES)
# The peer design each sidecar row is also put next to (the "x peer" column).
PEER_OF = {SIDECAR: PEER, **dict.fromkeys(SIDECAR_POSTGRES, WEB3SIGNER)}
JUDGED = (
    DURABLE_EMPTY,
    PEER,
    WEB3SIGNER,
    SIDECAR,
    *SIDECAR_POSTGRES,
)  # systems with a verdict: the sidecar's; the baselines' for information

SINGLE_CALLER_ALLOWANCE_S = 150e-6
POSTGRES_SINGLE_FACTOR = 2.0  # the PostgreSQL rows' one-caller p50: ≤ 2x (one local round trip + one commit)
POSTGRES_BATCH_FACTOR = 5.0  # the PostgreSQL rows' batched decisions/s: ≥ 5x the Web3Signer peer's


class Unit(Enum):
    RATE = "rate"
    LATENCY = "latency"
    SECONDS = "seconds"
    RATIO = "ratio"


@dataclass
class Cell:
    value: float | None = None
    status: str = "ok"  # ok, not available, error, invalid
    note: str = ""
    lower_bound: bool = False  # the run was capped: the true value is at least this (times) / at most (rates)

    @property
    def usable(self) -> bool:
        return self.status == "ok" and self.value is not None and math.isfinite(self.value)


@dataclass(frozen=True)
class Baseline:
    label: str
    value: float
    figure_key: str = ""  # the figure whose unit formats the value, when not the row's


@dataclass(frozen=True)
class Verdict:
    target: str
    outcome: str  # pass, FAIL, n/a (...)


BaselineRule = Callable[["Results", str, str], Baseline | None]  # (results, figure key, row's system)
TargetRule = Callable[["Results", str, str, Cell], Verdict | None]  # (results, key, row's system, cell)


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    metric: str
    unit: Unit
    rate_unit: str = ""
    baseline: BaselineRule | None = None
    target: TargetRule | None = None
    hidden: bool = False  # a reference value for other rows' baselines, not a row of its own


# --- baseline rules ----------------------------------------------------------------------------------------------


def empty_server(results: Results, key: str, system: str) -> Baseline | None:
    """The same figure measured on the empty server (which has no baseline of its own)."""
    if system == EMPTY:
        return None
    value = results.value(key, EMPTY)
    return None if value is None else Baseline(EMPTY, value)


def figure_of(other_key: str, label: str, *, system: str | None = None) -> BaselineRule:
    """Another figure, of the row's own system or of ``system``."""

    def rule(results: Results, key: str, row_system: str) -> Baseline | None:
        if (other_key, system or row_system) == (key, row_system):
            return None  # a floor is not its own baseline
        value = results.value(other_key, system or row_system)
        return None if value is None else Baseline(label, value, other_key)

    return rule


def single_caller_budget(results: Results, key: str, system: str) -> Baseline | None:
    """The single-caller target: empty-server p50 + one fdatasync + 150 µs. The fdatasync is the probe taken just
    before this system's single-caller run (disk contention from other processes drifts by the minute), else
    the disk floor's p50. For the sidecar on PostgreSQL: :func:`round_trip_and_commit`."""
    if system in SIDECAR_POSTGRES:
        return round_trip_and_commit(results, key, system)
    empty = results.value("single.p50", EMPTY)
    probe = results.value("probe.single.fsync_p50", system)
    disk = probe if probe is not None else results.value("disk.single.p50", DISK)
    if empty is None or disk is None:
        return None
    when = "fdatasync p50 just before" if probe is not None else "disk-floor fdatasync p50"
    return Baseline(f"empty p50 + {when} + 150 µs", empty + disk + SINGLE_CALLER_ALLOWANCE_S)


def round_trip_and_commit(results: Results, key: str, system: str) -> Baseline | None:
    """One local round trip (the empty server's single-caller p50) plus one PostgreSQL commit: the p50 of a
    one-row autocommit INSERT probe taken just before this row's single-caller run, else the PostgreSQL floor's."""
    empty = results.value("single.p50", EMPTY)
    probe = results.value("probe.single.commit_p50", system)
    commit = probe if probe is not None else results.value("postgres.commit.p50", POSTGRES_FLOOR)
    if empty is None or commit is None:
        return None
    when = "commit p50 just before" if probe is not None else "PostgreSQL-floor commit p50"
    return Baseline(f"empty p50 + {when}", empty + commit)


# --- target rules ------------------------------------------------------------------------------------------------


def _outcome(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def local_only(rule: TargetRule) -> TargetRule:
    """A target of the local sidecar's issue, not applied to the sidecar-on-PostgreSQL rows (theirs differ)."""

    def only(results: Results, key: str, system: str, cell: Cell) -> Verdict | None:
        return None if system in SIDECAR_POSTGRES else rule(results, key, system, cell)

    return only


def at_least_times_empty(factor: float) -> TargetRule:
    def rule(results: Results, key: str, system: str, cell: Cell) -> Verdict | None:
        target = f"≥ {factor:g}x empty"
        empty = results.value(key, EMPTY)
        if empty is None or cell.value is None:
            return Verdict(target, "n/a")
        return Verdict(target, _outcome(cell.value >= factor * empty))

    return rule


def batch_target(results: Results, key: str, system: str, cell: Cell) -> Verdict | None:
    if system in SIDECAR_POSTGRES:
        target = f"≥ {POSTGRES_BATCH_FACTOR:g}x Web3Signer peer"
        peer = results.value(key, WEB3SIGNER)
        if peer is None or cell.value is None:
            return Verdict(target, "n/a")
        return Verdict(target, _outcome(cell.value >= POSTGRES_BATCH_FACTOR * peer))
    target = "≥ 100,000/s and ≥ 0.5x empty"
    empty = results.value(key, EMPTY)
    if empty is None or cell.value is None:
        return Verdict(target, "n/a")
    return Verdict(target, _outcome(cell.value >= 100_000 and cell.value >= 0.5 * empty))


def single_caller_target(results: Results, key: str, system: str, cell: Cell) -> Verdict | None:
    budget = single_caller_budget(results, key, system)
    if system in SIDECAR_POSTGRES:
        factor, target = POSTGRES_SINGLE_FACTOR, f"≤ {POSTGRES_SINGLE_FACTOR:g}x (empty p50 + commit p50)"
    else:
        factor, target = 1.0, "≤ empty p50 + fdatasync p50 + 150 µs"
    if budget is None or cell.value is None:
        return Verdict(target, "n/a")
    return Verdict(target, _outcome(cell.value <= factor * budget.value))


def at_most_seconds(limit: float, *, strictly: bool = False, full_size_only: bool = False) -> TargetRule:
    def rule(results: Results, key: str, system: str, cell: Cell) -> Verdict | None:
        target = f"{'<' if strictly else '≤'} {limit:g} s"
        if full_size_only and results.reduced_size:
            return Verdict(target, f"n/a ({results.reduced_size})")
        if cell.value is None:
            return Verdict(target, "n/a")
        return Verdict(target, _outcome(cell.value < limit if strictly else cell.value <= limit))

    return rule


def at_least_ratio(minimum: float, text: str) -> TargetRule:
    def rule(results: Results, key: str, system: str, cell: Cell) -> Verdict | None:
        if cell.value is None:
            return Verdict(text, "n/a")
        return Verdict(text, _outcome(cell.value >= minimum))

    return rule


# --- the figures -------------------------------------------------------------------------------------------------

_UNARY = "Unary, 64 in flight"
_BATCH = "Batches of 100, 8 in flight"
_SINGLE = "One caller, one decision at a time"
_DISK_ONE = "Append 100 B + fdatasync"
_DISK_BATCH = "Append 100 records of 100 B + one fdatasync"
_ONE_PER_SYNC = "1 record per fdatasync"
_COMMIT = "PostgreSQL: one-row INSERT, autocommit (one round trip, one commit), one connection"


def _figures() -> list[Figure]:
    return [
        Figure(
            "unary.calls_per_s",
            _UNARY,
            "calls/s",
            Unit.RATE,
            "calls/s",
            empty_server,
            local_only(at_least_times_empty(0.8)),
        ),
        Figure("unary.p50", _UNARY, "p50", Unit.LATENCY, baseline=empty_server),
        Figure("unary.p99", _UNARY, "p99", Unit.LATENCY, baseline=empty_server),
        Figure(
            "batch.decisions_per_s", _BATCH, "decisions/s", Unit.RATE, "decisions/s", empty_server, batch_target
        ),
        Figure("batch.p99", _BATCH, "batch p99", Unit.LATENCY, baseline=empty_server),
        Figure(
            "single.p50", _SINGLE, "p50", Unit.LATENCY, baseline=single_caller_budget, target=single_caller_target
        ),
        Figure("single.p99", _SINGLE, "p99", Unit.LATENCY, baseline=empty_server),
        Figure(
            "burst.wall_s",
            "Slot burst: 31,250 attestations, batches of 100",
            "wall time",
            Unit.SECONDS,
            baseline=empty_server,
            target=at_most_seconds(1.0, strictly=True),
        ),
        Figure(
            "history.depth10",
            "History depth 10, batches of 100",
            "decisions/s",
            Unit.RATE,
            "decisions/s",
            empty_server,
        ),
        Figure(
            "history.depth1000",
            "History depth 1,000, batches of 100",
            "decisions/s",
            Unit.RATE,
            "decisions/s",
            figure_of("history.depth10", "depth 10, same system"),
        ),
        Figure(
            "history.ratio",
            "History depth 1,000 vs 10",
            "decisions/s ratio",
            Unit.RATIO,
            target=at_least_ratio(0.9, "within 10% (≥ 0.90)"),
        ),
        Figure(
            "inprocess.depth10",
            "SQLite store in-process, no gRPC, depth 10",
            "decisions/s",
            Unit.RATE,
            "decisions/s",
            figure_of("probe.inprocess.fsync_rate", "fdatasyncs/s just before"),
        ),
        Figure(
            "inprocess.depth1000",
            "SQLite store in-process, no gRPC, depth 1,000",
            "decisions/s",
            Unit.RATE,
            "decisions/s",
            figure_of("inprocess.depth10", "depth 10, same system"),
        ),
        Figure(
            "probe.single.fsync_p50", _DISK_ONE, "p50 just before the single caller", Unit.LATENCY, hidden=True
        ),
        Figure("probe.inprocess.fsync_rate", _DISK_ONE, "fdatasyncs/s", Unit.RATE, "/s", hidden=True),
        Figure("probe.single.commit_p50", _COMMIT, "p50 just before the single caller", Unit.LATENCY, hidden=True),
        Figure("postgres.commit.p50", _COMMIT, "p50", Unit.LATENCY),
        Figure("postgres.commit.p99", _COMMIT, "p99", Unit.LATENCY),
        Figure("postgres.commit.rate", _COMMIT, "commits/s", Unit.RATE, "/s"),
        Figure("disk.single.p50", _DISK_ONE, "p50", Unit.LATENCY),
        Figure("disk.single.p99", _DISK_ONE, "p99", Unit.LATENCY),
        Figure("disk.single.rate", _DISK_ONE, "fdatasyncs/s", Unit.RATE, "/s"),
        Figure(
            "disk.batch.p50",
            _DISK_BATCH,
            "p50",
            Unit.LATENCY,
            baseline=figure_of("disk.single.p50", _ONE_PER_SYNC),
        ),
        Figure(
            "disk.batch.p99",
            _DISK_BATCH,
            "p99",
            Unit.LATENCY,
            baseline=figure_of("disk.single.p99", _ONE_PER_SYNC),
        ),
        Figure(
            "disk.batch.rate",
            _DISK_BATCH,
            "records/s",
            Unit.RATE,
            "records/s",
            figure_of("disk.single.rate", _ONE_PER_SYNC),
        ),
        Figure(
            "restart.crash_s",
            "Restart after kill -9",
            "start to SERVING",
            Unit.SECONDS,
            baseline=empty_server,
            target=at_most_seconds(10.0),
        ),
        Figure(
            "restart.clean_s",
            "Restart after SIGTERM",
            "start to SERVING",
            Unit.SECONDS,
            baseline=empty_server,
            target=at_most_seconds(10.0),
        ),
        Figure(
            "import.s",
            "Import EIP-3076 file (CLI, offline)",
            "wall time",
            Unit.SECONDS,
            baseline=figure_of("import.s", "json.load in a fresh interpreter", system=JSON_FLOOR),
            target=local_only(at_most_seconds(5.0, full_size_only=True)),
        ),
        Figure(
            "export.s",
            "Export EIP-3076 file (CLI, offline)",
            "wall time",
            Unit.SECONDS,
            baseline=figure_of("export.s", "json.dumps in a fresh interpreter", system=JSON_FLOOR),
            target=local_only(at_most_seconds(3.0, full_size_only=True)),
        ),
    ]


FIGURES = {figure.key: figure for figure in _figures()}


# --- formatting --------------------------------------------------------------------------------------------------


def format_value(figure: Figure, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if figure.unit is Unit.RATE:
        return f"{value:,.0f} {figure.rate_unit}".strip()
    if figure.unit is Unit.LATENCY:
        if value < 1e-3:
            return f"{value * 1e6:,.0f} µs"
        return f"{value * 1e3:,.2f} ms" if value < 1 else f"{value:,.2f} s"
    if figure.unit is Unit.SECONDS:
        return f"{value:,.3f} s" if value < 10 else f"{value:,.1f} s"
    return f"{value:.2f}"


def format_ratio(ratio: float | None, *, lower_bound: bool = False) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "—"
    text = f"{ratio:.2f}x" if ratio >= 0.01 else f"{ratio:.4f}x"
    return "> " + text if lower_bound else text


def format_cell(figure: Figure, cell: Cell) -> str:
    if cell.status == "not available":
        return "not available"
    if cell.status == "error":
        return "error"
    text = format_value(figure, cell.value)
    if cell.lower_bound:
        text = ("> " if figure.unit in (Unit.SECONDS, Unit.LATENCY) else "< ") + text
    if cell.status == "invalid":
        text += " (invalid)"
    return text


# --- results -----------------------------------------------------------------------------------------------------


@dataclass
class CpuRow:
    system: str
    scenario: str
    client_procs: int
    client_cores: float | None
    server_cores: float | None
    other_cores: float | None
    rate: str
    server_cores_each: tuple[float, ...] = ()  # per replica, when several serve
    database_cores: float | None = None  # the PostgreSQL server's processes, when it was watched


@dataclass
class Row:
    figure: Figure
    system: str
    cell: Cell
    baseline: Baseline | None
    ratio: float | None
    vs_peer: float | None
    verdict: Verdict | None
    vs_durable_empty: float | None = None


@dataclass
class Results:
    mode: str
    reduced_size: str = ""  # set in quick mode: why size-dependent absolute targets are not judged
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    cpu: list[CpuRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)
    out: TextIO = sys.stdout

    def value(self, key: str, system: str) -> float | None:
        cell = self.cells.get((key, system))
        return cell.value if cell is not None and cell.usable else None

    def record(self, key: str, system: str, cell: Cell) -> None:
        """Stores a figure and prints it at once, next to its baseline."""
        self.cells[(key, system)] = cell
        row = self.row(key, system)
        parts = [f"  {system:<13} {row.figure.title} — {row.figure.metric}: {format_cell(row.figure, cell)}"]
        if row.baseline is not None and row.ratio is not None:
            ratio = format_ratio(row.ratio, lower_bound=row.cell.lower_bound)
            parts.append(f"{ratio} {row.baseline.label} ({self.format_baseline(row)})")
        if row.vs_peer is not None:
            parts.append(f"{format_ratio(row.vs_peer, lower_bound=row.cell.lower_bound)} {PEER_OF[system]}")
        if row.vs_durable_empty is not None:
            parts.append(f"{format_ratio(row.vs_durable_empty, lower_bound=row.cell.lower_bound)} {DURABLE_EMPTY}")
        if row.verdict is not None:
            parts.append(f"target {row.verdict.target}: {row.verdict.outcome}")
        if cell.note:
            parts.append(cell.note)
        print(" | ".join(parts), file=self.out, flush=True)

    def not_available(self, keys: list[str], system: str, reason: str) -> None:
        for key in keys:
            self.cells[(key, system)] = Cell(status="not available", note=reason)
        self.note(f"{system}: not available: {reason}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", file=self.out, flush=True)

    def baseline(self, key: str, system: str) -> Baseline | None:
        rule = FIGURES[key].baseline
        return None if rule is None else rule(self, key, system)

    def row(self, key: str, system: str) -> Row:
        figure = FIGURES[key]
        cell = self.cells[(key, system)]
        baseline = self.baseline(key, system)
        ratio = None
        if baseline is not None and cell.usable and baseline.value > 0:
            assert cell.value is not None
            ratio = cell.value / baseline.value
        vs_peer = None
        peer = self.value(key, PEER_OF[system]) if system in PEER_OF else None
        if cell.usable and peer and not figure.hidden:
            assert cell.value is not None
            vs_peer = cell.value / peer
        verdict = None
        if figure.target is not None and system in JUDGED and cell.status != "not available":
            verdict = figure.target(self, key, system, cell) if cell.usable else Verdict("", "n/a")
            if verdict is not None and cell.status == "invalid":
                verdict = Verdict(verdict.target, "invalid")
        return Row(figure, system, cell, baseline, ratio, vs_peer, verdict, self._vs_durable_empty(key, system))

    def _vs_durable_empty(self, key: str, system: str) -> float | None:
        """The sidecar's figure ÷ the durable empty server's: what the sidecar's own logic costs on top of making
        each decision durable (the hot-path figures only; the targets stay defined against the empty server)."""
        cell = self.cells[(key, system)]
        durable = self.value(key, DURABLE_EMPTY)
        if system != SIDECAR or FIGURES[key].hidden or not cell.usable or not durable:
            return None
        assert cell.value is not None
        return cell.value / durable

    @staticmethod
    def format_baseline(row: Row) -> str:
        if row.baseline is None:
            return "—"
        figure = FIGURES[row.baseline.figure_key] if row.baseline.figure_key else row.figure
        return format_value(figure, row.baseline.value)

    def rows(self) -> list[Row]:
        rows = []
        for key, figure in FIGURES.items():
            if figure.hidden:
                continue
            for system in SYSTEMS:
                if (key, system) in self.cells:
                    rows.append(self.row(key, system))
        return rows

    def markdown(self) -> str:
        lines = ["# slashing-sidecar benchmarks", ""]
        lines += [f"- **{name}**: {value}" for name, value in self.environment]
        lines += [
            "",
            "Ratios are value ÷ baseline, both measured in this run on this machine: above 1 means more per "
            "second, or more time. Verdicts on SQLite-peer, Web3Signer-peer and durable-empty-server rows are "
            "informative (the targets are the sidecar's). x peer: the sidecar ÷ the SQLite peer, the sidecar on "
            "PostgreSQL ÷ the Web3Signer peer. x durable empty: the sidecar ÷ the empty server made durable "
            "(group commit, one fdatasync per group), i.e. what the sidecar's own logic costs on top of "
            "durability.",
            "",
            "| Figure | Metric | System | Value | Baseline | Baseline value | x baseline | x peer "
            "| x durable empty | Target | Verdict |",
            "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for row in self.rows():
            baseline_label = row.baseline.label if row.baseline is not None else "—"
            baseline_value = self.format_baseline(row)
            bound = row.cell.lower_bound
            target = row.verdict.target if row.verdict is not None and row.verdict.target else "—"
            outcome = row.verdict.outcome if row.verdict is not None else "—"
            if outcome == "FAIL":
                outcome = "**FAIL**"
            lines.append(
                f"| {row.figure.title} | {row.figure.metric} | {row.system} | {format_cell(row.figure, row.cell)} "
                f"| {baseline_label} | {baseline_value} | {format_ratio(row.ratio, lower_bound=bound)} "
                f"| {format_ratio(row.vs_peer, lower_bound=bound)} "
                f"| {format_ratio(row.vs_durable_empty, lower_bound=bound)} "
                f"| {target} | {outcome} |"
            )
        if self.cpu:
            database = any(cpu.database_cores is not None for cpu in self.cpu)
            lines += [
                "",
                "## Load generator and server CPU",
                "",
                "Cores = CPU seconds per wall second while the load ran, summed over the client processes. "
                "Other load is every other process on the machine meanwhile: the noise under the figures. "
                + (
                    "Server cores of several replicas are their sum (each in parentheses). PostgreSQL cores are "
                    "the run's PostgreSQL server, all its processes, for the systems that decide through it (the "
                    "Web3Signer peer, the sidecar on PostgreSQL); for the others it is idle. "
                    if database
                    else ""
                )
                + f"The machine has {os.cpu_count() or 1} cores.",
                "",
                "| System | Scenario | Client processes | Client cores | Server cores "
                + ("| PostgreSQL cores " if database else "")
                + "| Other load (cores) | Throughput |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if database else ""),
            ]
            for cpu in self.cpu:
                server = _cores(cpu.server_cores)
                if cpu.server_cores_each:
                    server += " (" + " + ".join(f"{cores:.2f}" for cores in cpu.server_cores_each) + ")"
                lines.append(
                    f"| {cpu.system} | {cpu.scenario} | {cpu.client_procs} | {_cores(cpu.client_cores)} "
                    f"| {server} "
                    + (f"| {_cores(cpu.database_cores)} " if database else "")
                    + f"| {_cores(cpu.other_cores)} | {cpu.rate} |"
                )
        if self.notes:
            lines += ["", "## Notes", ""]
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _cores(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
