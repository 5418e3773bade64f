"""The harness: every measurement for every system, each figure printed as it comes, then the report.

Order matters: the floors and the empty server come first, so every later figure can be printed next to its
baseline the moment it is measured. The load generator is calibrated on the empty server (one client process or
two?) and the same client set-up then drives every system.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import __version__ as protobuf_version

from benchmarks import postgres_server, sidecar_postgres, web3signer_peer
from benchmarks.common import REPO_ROOT, ServerStartError
from benchmarks.report import (
    DISK,
    DURABLE_EMPTY,
    EMPTY,
    JSON_FLOOR,
    PEER,
    POSTGRES_FLOOR,
    WEB3SIGNER,
    Cell,
    Results,
)
from benchmarks.scenarios import (
    FULL,
    QUICK,
    InterchangeFile,
    KeyRanges,
    LoadPlan,
    Settings,
    TargetRun,
    attempt,
    calibrate_client,
    measure_disk_floor,
    measure_hot_path,
    measure_in_process_peer,
    measure_interchange,
    measure_restart,
)
from benchmarks.targets import Target, Web3SignerTarget, make_targets

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "latest.md"
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "results" / "tmp"
ALL_TARGETS = ("empty", "durable-empty", "sqlite-peer", "web3signer", "sidecar", sidecar_postgres.TARGET)
# The default set: web3signer joins it when PostgreSQL can be started here (see default_targets).
DEFAULT_TARGETS = ("empty", "durable-empty", "sqlite-peer", "sidecar")

HOT_PATH_FIGURES = [
    "unary.calls_per_s", "unary.p50", "unary.p99", "batch.decisions_per_s", "batch.p99", "single.p50",
    "single.p99", "burst.wall_s", "history.depth10", "history.depth1000", "history.ratio",
]  # fmt: skip
HISTORY_FIGURES = ["history.depth10", "history.depth1000", "history.ratio"]
RESTART_FIGURES = ["restart.crash_s", "restart.clean_s"]
INTERCHANGE_FIGURES = ["import.s", "export.s"]
BASELINE_SYSTEMS = (EMPTY, DURABLE_EMPTY, PEER, WEB3SIGNER, DISK, JSON_FLOOR, POSTGRES_FLOOR)


def default_targets() -> tuple[list[str], str | None]:
    """The systems measured without ``--targets``, and why web3signer is not among them (None when it is)."""
    reason = postgres_server.unavailable_reason()
    names = list(DEFAULT_TARGETS)
    if reason is None:
        names.insert(names.index("sidecar"), "web3signer")
    return names, reason


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks the sidecar against the empty server (plain and durable), the SQLite peer design "
        "and the disk floor.",
    )
    parser.add_argument("--quick", action="store_true", help="about one minute instead of about four")
    parser.add_argument(
        "--targets",
        default=None,
        help="comma-separated systems to measure, among " + ", ".join(ALL_TARGETS) + " (empty is always run; "
        "default: " + ", ".join(DEFAULT_TARGETS) + ", and web3signer when PostgreSQL can be started here)",
    )
    parser.add_argument(
        "--client-procs",
        default=None,
        help="client processes for the load, or auto: measure on the empty server whether a second one helps "
        "(default: auto, but 1 with --quick)",
    )
    parser.add_argument("--burst-in-flight", type=int, default=None, help="batches in flight in the slot burst")
    parser.add_argument("--interchange-keys", type=int, default=None, help="keys in the EIP-3076 file")
    parser.add_argument("--sidecar-args", default="", help="extra arguments for `sidecar serve` (one string)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where data directories go")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the data directories afterwards")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown report")
    args = parser.parse_args(argv)
    if args.client_procs is None:
        args.client_procs = "1" if args.quick else "auto"
    if args.client_procs != "auto" and not (args.client_procs.isdigit() and int(args.client_procs) >= 1):
        parser.error("--client-procs takes auto or a positive number")
    return args


def settings_for(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else FULL
    if args.burst_in_flight is not None:
        settings = dataclasses.replace(settings, burst_in_flight=args.burst_in_flight)
    if args.interchange_keys is not None:
        settings = dataclasses.replace(settings, interchange_keys=args.interchange_keys)
    return settings


def _filesystem_of(path: Path) -> str:
    """The filesystem holding ``path``, as "ext4 on /dev/vda (mounted at /)"."""
    real = str(path.resolve())
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount_point, fstype = line.split()[:3]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, device, fstype)
    except OSError:
        return "unknown"
    return f"{best[2]} on {best[1]} (mounted at {best[0]})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _environment(results: Results, settings: Settings, work: Path) -> None:
    filesystem = _filesystem_of(work)
    results.environment += [
        ("Date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        (
            "Mode",
            f"{settings.mode} (load windows {settings.duration_s:g} s after {settings.warmup_s:g} s warm-up)",
        ),
        ("Machine", f"{os.cpu_count()} cores, {_cpu_model()}, load average {os.getloadavg()[0]:.2f} at start"),
        (
            "Software",
            f"Python {platform.python_version()}, grpcio {grpc.__version__}, protobuf {protobuf_version}, "
            f"SQLite {sqlite3.sqlite_version}",
        ),
        ("Data filesystem", f"{filesystem}; every data directory and the disk floor live under {work}"),
    ]
    if "tmpfs" in filesystem:
        results.note("the data directory is on tmpfs: fdatasync is free there and every durable figure flatters")


async def _run_target(
    results: Results,
    target: Target,
    *,
    started: float,
    settings: Settings,
    work: Path,
    document: InterchangeFile,
    args: argparse.Namespace,
    plan: LoadPlan | None,
) -> LoadPlan | None:
    system = target.system
    print(f"\n== {system} (at {time.monotonic() - started:.0f} s)", flush=True)
    figures = list(HOT_PATH_FIGURES) + RESTART_FIGURES
    if target.hot_path_only or target.interchange_only_offline:
        figures = [key for key in figures if key not in HISTORY_FIGURES + RESTART_FIGURES]
    if target.import_argv(Path("f"), Path("d")) is not None:
        figures += INTERCHANGE_FIGURES
    reason = target.unavailable_reason()
    if reason is not None:
        results.not_available(figures, system, reason)
        return plan

    data_dir = work / target.name / "data"
    server = target.server(data_dir)
    try:
        await server.start(timeout_s=60)
    except ServerStartError as error:
        if target.is_baseline:
            for key in figures:
                results.record(key, system, Cell(status="error", note=str(error)))
        else:
            results.not_available(figures, system, str(error))
        return plan
    run = TargetRun(results, target, server, data_dir, settings, KeyRanges(), plan or LoadPlan(1, 1))
    try:
        if plan is None:  # the first system is the empty server: calibrate the load generator on it
            if args.client_procs == "auto":
                plan = await calibrate_client(run, max_procs=min(2, os.cpu_count() or 1))
            else:
                plan = LoadPlan(int(args.client_procs), int(args.client_procs))
            run.plan = plan
            how = "measured" if args.client_procs == "auto" else "not measured: --quick or --client-procs"
            described = (
                f"grpc.aio; {plan.unary_procs} client process(es) for unary load, {plan.batch_procs} for batches "
                f"({how}); one for the single caller"
            )
            results.environment.append(("Load generator", described))
        await measure_hot_path(run)
    finally:
        status = server.stop()
        if status not in (0, None) and target.is_baseline:
            results.note(f"{system}: exit status {status} after SIGTERM")

    if system == PEER:
        await attempt(
            results,
            ["inprocess.depth10", "inprocess.depth1000"],
            system,
            lambda: asyncio.to_thread(
                measure_in_process_peer, results, work / target.name / "in-process", settings
            ),
        )
    if system == WEB3SIGNER:
        await attempt(results, [], system, lambda: _note_web3signer_statements(results, target, work, settings))
    if target.hot_path_only:
        return plan
    if not target.interchange_only_offline:
        await attempt(results, RESTART_FIGURES, system, lambda: measure_restart(results, target, work, settings))
    if target.import_argv(Path("f"), Path("d")) is not None:
        await attempt(
            results,
            INTERCHANGE_FIGURES,
            system,
            lambda: measure_interchange(results, target, work, settings, document),
        )
    return plan


async def _note_web3signer_statements(results: Results, target: Target, work: Path, settings: Settings) -> None:
    """The Web3Signer peer's statements (= round trips) per decision and its in-process rate, one decision at a
    time without gRPC: what the gRPC figures are made of."""
    assert isinstance(target, Web3SignerTarget)
    url = await asyncio.to_thread(target.database_url, work / target.name / "in-process")
    measured = await web3signer_peer.measure_in_process(url, seconds=settings.inprocess_s, depth=10)
    results.note(
        f"{WEB3SIGNER}: {measured.statements_per_decision:.2f} statements per decision, each a round trip to "
        f"PostgreSQL (BEGIN and COMMIT included; Web3Signer's JDBC driver sends BEGIN with the next statement, "
        f"one round trip fewer); in-process, one decision at a time, no gRPC: "
        f"{measured.decisions_per_s:,.0f} decisions/s at history depth 10 ({measured.decisions:,} decisions)"
    )


async def _start_postgres(
    results: Results, work: Path, targets: list[Target]
) -> postgres_server.PostgresServer | None:
    """The run's PostgreSQL server, when a target needs one; its absence makes those targets "not available"."""
    try:
        server = await asyncio.to_thread(postgres_server.start_postgres, work / "postgres")
    except postgres_server.PostgresUnavailableError as error:
        for target in targets:
            if isinstance(target, Web3SignerTarget):
                target.use_postgres(None, f"PostgreSQL unavailable: {error}")
        return None
    results.environment.append(
        (
            "PostgreSQL",
            f"{server.version} (Debian binaries, {server.bin_dir}), fresh cluster on 127.0.0.1:{server.port}, "
            "fsync=on, synchronous_commit=on, full_page_writes=on, data under the work directory",
        )
    )
    for target in targets:
        if isinstance(target, Web3SignerTarget):
            target.use_postgres(server)
    return server


async def run(args: argparse.Namespace) -> Results:
    settings = settings_for(args)
    results = Results(mode=settings.mode)
    if settings.interchange_keys != FULL.interchange_keys:
        results.reduced_size = f"{settings.interchange_keys:,}-key file; the target is for 100,000"
    if args.targets is None:
        names, no_postgres = default_targets()
        if no_postgres is not None:
            results.note(f"{WEB3SIGNER}: not in the default targets: {no_postgres}")
    else:
        names = [name.strip() for name in args.targets.split(",") if name.strip()]
    if "empty" not in names:
        names.insert(0, "empty")
        print("note: the empty server is always measured: it is the baseline of the other systems", flush=True)
    targets = make_targets(
        [name for name in names if name != sidecar_postgres.TARGET], sidecar_args=shlex.split(args.sidecar_args)
    )

    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    started = time.monotonic()
    postgres: postgres_server.PostgresServer | None = None
    try:
        _environment(results, settings, work)
        if any(target.needs_postgres for target in targets) or sidecar_postgres.TARGET in names:
            postgres = await _start_postgres(results, work, targets)
        for name, value in results.environment:
            print(f"{name}: {value}", flush=True)
        print("\n== disk floor", flush=True)
        measure_disk_floor(results, work / "disk-floor", settings)
        document = InterchangeFile(work, settings.interchange_keys)
        plan: LoadPlan | None = None
        for target in targets:
            plan = await _run_target(
                results,
                target,
                started=started,
                settings=settings,
                work=work,
                document=document,
                args=args,
                plan=plan,
            )
        if sidecar_postgres.TARGET in names:
            print(f"\n== sidecar on PostgreSQL (at {time.monotonic() - started:.0f} s)", flush=True)
            await sidecar_postgres.measure_sidecar_on_postgres(
                results, postgres, settings, work / sidecar_postgres.TARGET, plan or LoadPlan(1, 1), document
            )
    finally:
        if postgres is not None:
            postgres.stop()
        if not args.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
            if args.work_dir == DEFAULT_WORK_DIR and not any(args.work_dir.iterdir()):
                args.work_dir.rmdir()
        elapsed = time.monotonic() - started
        results.environment.append(("Harness wall time", f"{elapsed:.0f} s"))
        _note_noise(results)
    return results


NOISY_CORES = 0.25


def _note_noise(results: Results) -> None:
    """Says how much of the machine other processes took while the load ran: ratios taken under very different
    other load compare different machines."""
    others = [cpu.other_cores for cpu in results.cpu if cpu.other_cores is not None]
    noisy = [value for value in others if value > NOISY_CORES]
    if noisy:
        results.note(
            f"{len(noisy)} of {len(others)} load runs shared the machine with more than {NOISY_CORES:g} cores of "
            f"other load (up to {max(noisy):.2f} of {os.cpu_count()}; see the CPU table): treat their ratios as "
            "rough, and rerun on a quiet machine before acting on a small difference"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except ValueError as error:  # an unknown target name
        print(f"benchmarks: {error}", file=sys.stderr)
        return 2
    report = results.markdown()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print("\n" + report, flush=True)
    print(f"written to {args.output}", flush=True)
    failed = [
        f"{key} ({system})"
        for (key, system), cell in results.cells.items()
        if system in BASELINE_SYSTEMS and cell.status in ("error", "invalid")
    ]
    if failed:
        print(f"benchmarks: baseline figures failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.targets is None or "sidecar" in args.targets.split(","):
        # Memory, restart with a long log tail and checkpoint impact: their own module, same run.
        from benchmarks import storage_figures

        print("\n== storage figures", flush=True)
        return storage_figures.main(["--quick"] if args.quick else [])
    return 0
