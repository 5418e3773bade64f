"""The measurements run against each system, each turning a run into figures of the report.

Each function measures one thing and records its figures in :class:`benchmarks.report.Results`; a failure is
recorded as an error on those figures (never raised), so one broken scenario never hides the others.
"""

from __future__ import annotations

import asyncio
import functools
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from benchmarks import disk_floor, sqlite_peer
from benchmarks.common import (
    ServerProcess,
    open_channel,
    pubkey,
    pubkeys,
    register_validators,
    subprocess_env,
    wait_until_idle,
)
from benchmarks.interchange_docs import HistorySet, count_validators, write_keys_document
from benchmarks.load import Burst, ClosedLoop, LoadSummary, drive, drive_many
from benchmarks.report import DISK, JSON_FLOOR, PEER, Cell, CpuRow, Results
from benchmarks.targets import Target
from slashing_protection.v1 import admin_pb2, admin_pb2_grpc

BATCH = 100
SLOT_BURST = 31_250  # attestations due in one slot: 1,000,000 validators / 32 slots
HISTORY_DEEP = 1_000
HISTORY_SHALLOW = 10


@dataclass(frozen=True)
class Settings:
    mode: str
    disk_seconds: float
    calibration_warmup_s: float
    calibration_s: float
    calibration_reps: int
    warmup_s: float
    duration_s: float
    single_s: float
    burst_cap_s: float
    burst_in_flight: int
    history_lanes: int
    history_passes: int
    history_rounds_per_pass: int
    history_shallow_groups: int
    history_pass_cap_s: float
    history_prefill_timeout_s: float
    inprocess_s: float
    fsync_probe_s: float
    restart_validators: int
    restart_records: int
    restart_populate_cap_s: float
    restart_timeout_s: float
    interchange_keys: int
    cli_timeout_s: float


FULL = Settings(
    mode="full",
    disk_seconds=3.0,
    calibration_warmup_s=0.3,
    calibration_s=0.75,
    calibration_reps=2,
    warmup_s=1.0,
    duration_s=4.0,
    single_s=3.0,
    burst_cap_s=8.0,
    burst_in_flight=8,
    history_lanes=4,
    history_passes=4,
    history_rounds_per_pass=40,
    history_shallow_groups=4,
    history_pass_cap_s=1.0,
    history_prefill_timeout_s=60.0,
    inprocess_s=1.5,
    fsync_probe_s=0.5,
    restart_validators=8_000,
    restart_records=100_000,
    restart_populate_cap_s=20.0,
    restart_timeout_s=60.0,
    interchange_keys=100_000,
    cli_timeout_s=30.0,
)

QUICK = Settings(
    mode="quick",
    disk_seconds=1.0,
    calibration_warmup_s=0.2,
    calibration_s=0.75,
    calibration_reps=1,
    warmup_s=0.5,
    duration_s=1.5,
    single_s=1.5,
    burst_cap_s=3.0,
    burst_in_flight=8,
    history_lanes=2,
    history_passes=2,
    history_rounds_per_pass=20,
    history_shallow_groups=2,
    history_pass_cap_s=0.75,
    history_prefill_timeout_s=30.0,
    inprocess_s=0.75,
    fsync_probe_s=0.3,
    restart_validators=1_600,
    restart_records=20_000,
    restart_populate_cap_s=8.0,
    restart_timeout_s=30.0,
    interchange_keys=10_000,
    cli_timeout_s=20.0,
)


class KeyRanges:
    """Hands out disjoint ranges of validator indexes, so that no two scenarios share a validator."""

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def take(self, count: int) -> int:
        first = self._next
        self._next += count
        return first


def _describe_problem(summary: LoadSummary) -> str:
    parts = []
    if summary.refused:
        parts.append(f"{summary.refused:,} refused")
    if summary.errors:
        parts.append(f"{summary.errors:,} failed calls")
    return ", ".join(parts) + (f"; first: {summary.problem}" if summary.problem else "")


def load_cell(value: float, summary: LoadSummary, *, lower_bound: bool = False, note: str = "") -> Cell:
    """A figure measured under ``summary``'s load: "invalid" (with the first problem) unless every call was
    answered and allowed."""
    if summary.clean:
        return Cell(value, lower_bound=lower_bound, note=note)
    return Cell(value, status="invalid", lower_bound=lower_bound, note=_describe_problem(summary))


async def attempt(results: Results, keys: Sequence[str], system: str, work: Callable[[], Awaitable[None]]) -> bool:
    """Runs one measurement; a failure becomes an error on ``keys`` for ``system``. True if it succeeded."""
    try:
        await work()
        return True
    except Exception as error:
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, grpc.aio.AioRpcError):
            text = f"{error.code().name}: {error.details()}"
        for key in keys:
            if (key, system) not in results.cells or results.cells[(key, system)].status == "ok":
                results.record(key, system, Cell(status="error", note=text))
        results.note(f"{system}: {', '.join(keys)} failed: {text}")
        return False


@dataclass
class LoadPlan:
    unary_procs: int
    batch_procs: int


@dataclass
class TargetRun:
    """One system's server while its hot path is measured, and what the measurements share."""

    results: Results
    target: Target
    server: ServerProcess
    data_dir: Path
    settings: Settings
    keys: KeyRanges
    plan: LoadPlan

    @property
    def system(self) -> str:
        return self.target.system

    async def drive(self, scenario: str, spec: ClosedLoop | Burst, procs: int) -> LoadSummary:
        """Drives ``spec`` and notes the CPU of client, server (and its database server, if any) and everything
        else during it."""
        summary = await drive_many(
            [self.server.address],
            spec,
            procs=procs,
            server_pids=[self.server.pid],
            database_pids=self.target.database_pids(),
        )
        self.results.cpu.append(cpu_row(self.system, scenario, spec, summary))
        return summary


def cpu_row(system: str, scenario: str, spec: ClosedLoop | Burst, summary: LoadSummary) -> CpuRow:
    """The CPU table's row for one load run."""
    if isinstance(spec, Burst):
        rate = f"{summary.decisions:,} in {summary.wall_s:.3f} s"
    elif spec.batch_size > 1:
        rate = f"{summary.decisions_per_s:,.0f} decisions/s"
    else:
        rate = f"{summary.calls_per_s:,.0f} calls/s"
    return CpuRow(
        system,
        scenario,
        summary.client_procs,
        summary.client_cores,
        summary.server_cores,
        summary.other_cores,
        rate,
        summary.server_cores_each,
        summary.database_cores,
    )


# --- floors ------------------------------------------------------------------------------------------------------


def measure_disk_floor(results: Results, directory: Path, settings: Settings) -> None:
    floor = disk_floor.measure(directory, seconds=settings.disk_seconds)
    note = f"{floor.single.appends:,} appends"
    results.record("disk.single.p50", DISK, Cell(floor.single.p50_s, note=note))
    results.record("disk.single.p99", DISK, Cell(floor.single.p99_s))
    results.record("disk.single.rate", DISK, Cell(floor.single.appends_per_s))
    results.record("disk.batch.p50", DISK, Cell(floor.batch.p50_s, note=f"{floor.batch.appends:,} appends"))
    results.record("disk.batch.p99", DISK, Cell(floor.batch.p99_s))
    results.record("disk.batch.rate", DISK, Cell(floor.batch.records_per_s))


_JSON_FLOOR_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    document = json.load(f)
t1 = time.perf_counter()
with open(sys.argv[2], "w") as f:
    f.write(json.dumps(document))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def measure_json_floor(results: Results, document: Path, scratch: Path) -> None:
    """Interpreter start-up + json.load (import floor) and + json.dumps (export floor) of the same file."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import json"], check=True)
    startup = time.monotonic() - started
    output = subprocess.run(
        [sys.executable, "-c", _JSON_FLOOR_SCRIPT, str(document), str(scratch)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    load_s, dump_s = float(output[0]), float(output[1])
    scratch.unlink(missing_ok=True)
    results.record("import.s", JSON_FLOOR, Cell(startup + load_s, note="interpreter start + json.load"))
    results.record("export.s", JSON_FLOOR, Cell(startup + dump_s, note="interpreter start + json.dumps + write"))


# --- load generator calibration ----------------------------------------------------------------------------------


async def calibrate_client(run: TargetRun, max_procs: int) -> LoadPlan:
    """Measures, on the empty server, whether one client process saturates before the server does, for unary and
    for batch load, and returns the client process counts to use from then on (noting the evidence).

    The two set-ups alternate, ``calibration_reps`` times each, and each keeps its best run: load from other
    processes on a shared machine only ever lowers a figure.
    """
    settings = run.settings
    warm_up = ClosedLoop("unary", 64, 1, 1, run.keys.take(64), 1, 0.0, 2 * settings.calibration_warmup_s)
    await drive(run.server.address, warm_up)  # the server's first calls are slower: not for comparison
    chosen = []
    for scenario, rpc, batch_size, groups in (
        ("unary, 64 in flight", "unary", 1, 64),
        ("batches, 8 in flight", "batch", BATCH, 4),
    ):
        lanes = 64 if rpc == "unary" else 8
        best: dict[int, LoadSummary] = {}
        for _ in range(settings.calibration_reps):
            for procs in sorted({1, max(1, max_procs)}):
                first = run.keys.take(lanes * groups * batch_size)
                spec = ClosedLoop(
                    rpc, lanes, batch_size, groups, first, 1, settings.calibration_warmup_s, settings.calibration_s
                )
                summary = await run.drive(f"calibration: {scenario}", spec, procs)
                if procs not in best or summary.decisions_per_s > best[procs].decisions_per_s:
                    best[procs] = summary
        one = best[1]
        top = max(best, key=lambda procs: best[procs].decisions_per_s)
        use = top if best[top].decisions_per_s >= 1.10 * one.decisions_per_s else 1
        unit = "calls/s" if rpc == "unary" else "decisions/s"
        described = "; ".join(
            f"{procs} client process(es): {summary.decisions_per_s:,.0f} {unit} (client "
            f"{summary.client_cores:.2f} cores, server {summary.server_cores or 0:.2f}, "
            f"others {summary.other_cores or 0:.2f})"
            for procs, summary in sorted(best.items())
        )
        if one.client_cores >= 0.9:
            verdict = "one client process saturates its core first"
        elif (one.server_cores or 0.0) >= 0.9:
            verdict = "the server saturates first (its event loop's core)"
        else:
            verdict = f"neither saturates a core ({one.other_cores or 0:.2f} cores went to other processes)"
        if use > 1 and one.client_cores < 0.9:
            verdict += (
                f"; {use} processes still measured ≥ 10% faster, probably by winning a larger share of a busy "
                "machine from the other processes"
            )
        verdict += f"; {use} client process{'es' if use > 1 else ''} used"
        run.results.note(
            f"load generator, {scenario}, on the empty server (best of {settings.calibration_reps}): "
            f"{described} → {verdict}"
        )
        chosen.append(use)
    return LoadPlan(unary_procs=chosen[0], batch_procs=chosen[1])


# --- the hot path ------------------------------------------------------------------------------------------------


# The hot path's load shapes, the same for every system (the sidecar-on-PostgreSQL rows use them too).
UNARY_SCENARIO = "unary, 64 in flight"
BATCH_SCENARIO = "batches of 100, 8 in flight"
SINGLE_SCENARIO = "one caller"


def unary_load(keys: KeyRanges, settings: Settings) -> ClosedLoop:
    """64 callers, one call each in flight, 64 validators per caller."""
    return ClosedLoop("unary", 64, 1, 64, keys.take(64 * 64), 1, settings.warmup_s, settings.duration_s)


def batch_load(keys: KeyRanges, settings: Settings) -> ClosedLoop:
    """8 batches of 100 in flight over 16,000 validators: the history each one gathers during the run stays
    shallow."""
    groups = 20
    return ClosedLoop(
        "batch", 8, BATCH, groups, keys.take(8 * groups * BATCH), 1, settings.warmup_s, settings.duration_s
    )


def single_load(keys: KeyRanges, settings: Settings) -> ClosedLoop:
    """One caller, one decision at a time."""
    return ClosedLoop("unary", 1, 1, 64, keys.take(64), 1, settings.warmup_s / 2, settings.single_s)


async def _unary(run: TargetRun) -> None:
    settings = run.settings
    spec = unary_load(run.keys, settings)
    await register_validators(run.server.address, pubkeys(spec.first_validator, spec.validators))
    summary = await run.drive(UNARY_SCENARIO, spec, run.plan.unary_procs)
    run.results.record("unary.calls_per_s", run.system, load_cell(summary.calls_per_s, summary))
    run.results.record("unary.p50", run.system, load_cell(summary.p50_s, summary))
    run.results.record("unary.p99", run.system, load_cell(summary.p99_s, summary))


async def _batches(run: TargetRun) -> None:
    spec = batch_load(run.keys, run.settings)
    await register_validators(run.server.address, pubkeys(spec.first_validator, spec.validators))
    summary = await run.drive(BATCH_SCENARIO, spec, run.plan.batch_procs)
    run.results.record("batch.decisions_per_s", run.system, load_cell(summary.decisions_per_s, summary))
    run.results.record("batch.p99", run.system, load_cell(summary.p99_s, summary))


def probe_fsync(directory: Path, settings: Settings) -> disk_floor.SyncFigures:
    """A short disk-floor sample, for a baseline that must be taken at the same time as the figure: disk
    contention from other processes drifts by the minute on a shared machine."""
    directory.mkdir(parents=True, exist_ok=True)
    return disk_floor.measure_appends(
        directory, records_per_append=1, seconds=settings.fsync_probe_s, max_appends=100_000
    )


async def _single(run: TargetRun) -> None:
    settings = run.settings
    probe = await asyncio.to_thread(probe_fsync, run.data_dir.parent, settings)
    run.results.record("probe.single.fsync_p50", run.system, Cell(probe.p50_s, note=f"{probe.appends:,} appends"))
    spec = single_load(run.keys, settings)
    await register_validators(run.server.address, pubkeys(spec.first_validator, spec.validators))
    summary = await run.drive(SINGLE_SCENARIO, spec, 1)
    note = f"{summary.calls:,} calls"
    run.results.record("single.p50", run.system, load_cell(summary.p50_s, summary, note=note))
    run.results.record("single.p99", run.system, load_cell(summary.p99_s, summary))


async def _burst(run: TargetRun) -> None:
    settings = run.settings
    spec = Burst(run.keys.take(SLOT_BURST), SLOT_BURST, BATCH, settings.burst_in_flight, settings.burst_cap_s)
    await register_validators(run.server.address, pubkeys(spec.first_validator, spec.count))
    summary = await run.drive(f"slot burst, {spec.in_flight} in flight", spec, run.plan.batch_procs)
    if not summary.capped:
        run.results.record("burst.wall_s", run.system, load_cell(summary.wall_s, summary))
        return
    rate = summary.decisions / summary.wall_s if summary.wall_s > 0 else 0.0
    estimate = f"; at that rate all would take ≈ {SLOT_BURST / rate:.1f} s" if rate > 0 else ""
    note = f"capped at {settings.burst_cap_s:g} s: {summary.decisions:,} of {SLOT_BURST:,} answered{estimate}"
    run.results.record(
        "burst.wall_s", run.system, load_cell(settings.burst_cap_s, summary, lower_bound=True, note=note)
    )
    await wait_until_idle(run.server.pid, timeout_s=5.0)  # calls cancelled by the cap may still hold it


async def measure_hot_path(run: TargetRun) -> None:
    """Every ``SlashingProtectionService`` figure of one system; a dead server turns the rest into errors."""
    steps: list[tuple[list[str], Callable[[TargetRun], Awaitable[None]]]] = [
        (["unary.calls_per_s", "unary.p50", "unary.p99"], _unary),
        (["batch.decisions_per_s", "batch.p99"], _batches),
        (["single.p50", "single.p99"], _single),
        (["burst.wall_s"], _burst),
        (["history.depth10", "history.depth1000", "history.ratio"], measure_history),
    ]
    if run.target.hot_path_only or run.target.interchange_only_offline:
        steps = [(keys, step) for keys, step in steps if step is not measure_history]
    for figure_keys, step in steps:
        if not run.server.alive():
            reason = f"the server exited: {run.server.last_words()}"
            for key in figure_keys:
                run.results.record(key, run.system, Cell(status="error", note=reason))
            continue
        await attempt(run.results, figure_keys, run.system, functools.partial(step, run))


async def _history_depth_of(address: str, key: bytes) -> int | None:
    """The attestation count ``AdminService.GetValidatorSummary`` reports, or None if it is not offered."""
    async with open_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            summary = await stub.GetValidatorSummary(admin_pb2.GetValidatorSummaryRequest(pubkey=key), timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return int(summary.attestation_count)


async def measure_history(run: TargetRun) -> None:
    """Decisions/s for validators with 1,000 recorded attestations against validators with 10.

    Both sets take the same load: ``history_lanes`` batches of 100 in flight, ``rounds`` batches per lane per
    pass. The deep set (one group of 100 validators per lane) is reused across passes and deepens by ``rounds``
    per pass, a few per cent of 1,000. Each pass gets a fresh shallow set of ``history_shallow_groups`` groups
    per lane, so that its validators stay between 10 and 10 + rounds / groups deep. Passes alternate which set
    goes first, so drifting load from elsewhere on the machine weighs on both alike. The client runs in this
    process: spawning client processes for every short pass would cost more than the passes, and the figure is
    a ratio between two runs of the same client.
    """
    settings = run.settings
    lanes, rounds, shallow_groups = (
        settings.history_lanes,
        settings.history_rounds_per_pass,
        settings.history_shallow_groups,
    )
    deep_count = lanes * BATCH
    shallow_count = lanes * shallow_groups * BATCH
    deep_first = run.keys.take(deep_count)
    shallow_firsts = [run.keys.take(shallow_count) for _ in range(settings.history_passes)]
    sets = [HistorySet(deep_first, deep_count, HISTORY_DEEP)]
    sets += [HistorySet(first, shallow_count, HISTORY_SHALLOW) for first in shallow_firsts]
    started = time.monotonic()
    await run.target.prefill_history(run.server.address, run.data_dir, sets, settings.history_prefill_timeout_s)
    prefill_s = time.monotonic() - started
    depth = await _history_depth_of(run.server.address, pubkey(deep_first))
    if depth is not None and depth < HISTORY_DEEP:
        run.results.note(
            f"{run.system}: a deep validator reports {depth} recorded attestations after the pre-fill"
        )

    decisions = {HISTORY_SHALLOW: 0, HISTORY_DEEP: 0}
    seconds = {HISTORY_SHALLOW: 0.0, HISTORY_DEEP: 0.0}
    summaries: list[LoadSummary] = []
    for number in range(settings.history_passes):
        order = (HISTORY_SHALLOW, HISTORY_DEEP) if number % 2 == 0 else (HISTORY_DEEP, HISTORY_SHALLOW)
        for history_depth in order:
            if history_depth == HISTORY_SHALLOW:
                first, groups, start_epoch = shallow_firsts[number], shallow_groups, HISTORY_SHALLOW + 1
            else:
                first, groups, start_epoch = deep_first, 1, HISTORY_DEEP + 1 + number * rounds
            spec = ClosedLoop(
                "batch",
                lanes=lanes,
                batch_size=BATCH,
                groups_per_lane=groups,
                first_validator=first,
                start_epoch=start_epoch,
                duration_s=settings.history_pass_cap_s,
                max_rounds_per_lane=rounds,
            )
            summary = await run.drive(f"history depth {history_depth:,}", spec, 1)
            decisions[history_depth] += summary.decisions
            seconds[history_depth] += summary.window_s
            summaries.append(summary)
    rate = {depth: decisions[depth] / seconds[depth] if seconds[depth] > 0 else 0.0 for depth in decisions}
    deepest = HISTORY_DEEP + settings.history_passes * rounds
    note = (
        f"{lanes} batches in flight; {settings.history_passes} passes of ≤ {rounds} batches per lane and per set "
        f"(≤ {settings.history_pass_cap_s:g} s); depth 10 → ≤ {HISTORY_SHALLOW + -(-rounds // shallow_groups)}, "
        f"1,000 → ≤ {deepest:,}; pre-fill took {prefill_s:.1f} s"
    )
    reference = next((summary for summary in summaries if not summary.clean), summaries[-1])
    run.results.record("history.depth10", run.system, load_cell(rate[HISTORY_SHALLOW], reference, note=note))
    run.results.record("history.depth1000", run.system, load_cell(rate[HISTORY_DEEP], reference))
    ratio = rate[HISTORY_DEEP] / rate[HISTORY_SHALLOW] if rate[HISTORY_SHALLOW] > 0 else math.nan
    run.results.record("history.ratio", run.system, load_cell(ratio, reference))


def measure_in_process_peer(results: Results, directory: Path, settings: Settings) -> None:
    probe = probe_fsync(directory, settings)
    results.record(
        "probe.inprocess.fsync_rate", PEER, Cell(probe.appends_per_s, note=f"{probe.appends:,} appends")
    )
    for depth, key in ((HISTORY_SHALLOW, "inprocess.depth10"), (HISTORY_DEEP, "inprocess.depth1000")):
        in_process = sqlite_peer.measure_in_process(directory, seconds=settings.inprocess_s, depth=depth)
        note = f"{in_process.decisions:,} decisions, one thread"
        results.record(key, PEER, Cell(in_process.decisions_per_s, note=note))


# --- restart -----------------------------------------------------------------------------------------------------


async def measure_restart(results: Results, target: Target, work: Path, settings: Settings) -> None:
    """Time from process start to health SERVING on a data directory with N validators and M records, after a
    kill -9 (the log must be replayed) and after a clean SIGTERM."""
    system = target.system
    data_dir = work / target.name / "restart"
    lanes = 8
    groups = max(1, settings.restart_validators // (lanes * BATCH))
    validators = groups * lanes * BATCH
    rounds = max(1, math.ceil(settings.restart_records / (lanes * BATCH)))
    servers: list[ServerProcess] = []

    def server() -> ServerProcess:
        servers.append(target.server(data_dir, restart_scenario=True))
        return servers[-1]

    try:
        if target.seeds_offline:
            depth = rounds * lanes * BATCH // validators
            await asyncio.to_thread(target.seed_offline, data_dir, 0, validators, depth)
            records = validators * depth
            filler = server()
            await filler.start(timeout_s=settings.restart_timeout_s)
        else:
            filler = server()
            await filler.start(timeout_s=settings.restart_timeout_s)
            await register_validators(filler.address, pubkeys(0, validators))
            spec = ClosedLoop("batch", lanes, BATCH, groups, 0, 1, 0.0, settings.restart_populate_cap_s, rounds)
            summary = await drive(filler.address, spec)
            if not summary.clean:
                raise RuntimeError(f"filling the log failed: {_describe_problem(summary)}")
            records = summary.decisions
        filler.kill()

        crashed = server()
        crash_times = await crashed.start(timeout_s=settings.restart_timeout_s)
        status = crashed.stop()
        note = f"{validators:,} validators, {records:,} recorded attestations"
        results.record("restart.crash_s", system, Cell(crash_times.to_serving_s, note=note))
        if status != 0:
            results.note(f"{system}: exit status {status} after SIGTERM (the contract says 0)")

        clean = server()
        clean_times = await clean.start(timeout_s=settings.restart_timeout_s)
        clean.stop()
        results.record("restart.clean_s", system, Cell(clean_times.to_serving_s))
    finally:
        for leftover in servers:
            leftover.kill()


# --- interchange -------------------------------------------------------------------------------------------------


class InterchangeFile:
    """The operator's EIP-3076 file, generated once per run (and its JSON floor measured once)."""

    def __init__(self, work: Path, keys: int) -> None:
        self.path = work / f"interchange-{keys}-keys.json"
        self.keys = keys
        self._ready = False

    def ensure(self, results: Results) -> Path:
        if not self._ready:
            size = write_keys_document(self.path, first_validator=10_000_000, count=self.keys)
            results.note(
                f"interchange file: {self.keys:,} keys, 1 block + 1 attestation each, {size / 1e6:.1f} MB"
            )
            measure_json_floor(results, self.path, self.path.with_suffix(".floor.json"))
            self._ready = True
        return self.path


def _run_cli(argv: list[str], timeout_s: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    completed = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout_s, env=subprocess_env()
    )
    return time.monotonic() - started, completed


def _cli_failure(completed: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (completed.stderr + completed.stdout).splitlines() if line.strip()]
    return f"exit {completed.returncode}: {lines[-1] if lines else '(no output)'}"


async def measure_interchange(
    results: Results, target: Target, work: Path, settings: Settings, document: InterchangeFile
) -> None:
    system = target.system
    data_dir = work / target.name / "interchange"
    path = document.ensure(results)
    import_argv = target.import_argv(path, data_dir)
    export_file = work / target.name / "export.json"
    export_argv = target.export_argv(export_file, data_dir)
    if import_argv is None or export_argv is None:
        return
    await target.prepare_data_dir(data_dir)
    timeout_s = max(settings.cli_timeout_s, target.cli_timeout_s or 0.0)
    try:
        import_s, completed = await asyncio.to_thread(_run_cli, import_argv, timeout_s)
    except subprocess.TimeoutExpired:
        results.record("import.s", system, Cell(timeout_s, lower_bound=True, note="timed out"))
        return
    if completed.returncode != 0:
        results.record("import.s", system, Cell(import_s, status="invalid", note=_cli_failure(completed)))
        return
    results.record("import.s", system, Cell(import_s, note=f"{document.keys:,} keys"))
    try:
        export_s, completed = await asyncio.to_thread(_run_cli, export_argv, timeout_s)
    except subprocess.TimeoutExpired:
        results.record("export.s", system, Cell(timeout_s, lower_bound=True, note="timed out"))
        return
    if completed.returncode != 0:
        results.record("export.s", system, Cell(export_s, status="invalid", note=_cli_failure(completed)))
        return
    try:
        exported = await asyncio.to_thread(count_validators, export_file)
    except (OSError, ValueError, KeyError, TypeError) as error:
        results.record("export.s", system, Cell(export_s, status="invalid", note=f"unreadable export: {error}"))
        return
    if exported != document.keys:
        note = f"exported {exported:,} validators, expected {document.keys:,}"
        results.record("export.s", system, Cell(export_s, status="invalid", note=note))
        return
    results.record("export.s", system, Cell(export_s, note=f"{exported:,} keys verified"))
    export_file.unlink(missing_ok=True)
