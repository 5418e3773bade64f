"""Storage figures of the performance issue, each beside a baseline measured in the same run:

* memory: resident set of a process holding 100,000 validators with a full default history window (80 epochs of
  attestations each: the window plus its pruning slack), against the same process before it held any;
* restart: time from `serve` to gRPC SERVING on a directory with 100,000 validators and 1,000,000 log records
  after its checkpoint, against the same on an empty directory (interpreter and imports: the floor);
* checkpoint: p99 decision latency while `SaveCheckpoint` of those 100,000 validators runs back to back,
  against the p99 of the same load without a checkpoint;
* import memory: peak resident set of `python -m sidecar import FILE --data-dir D` on a complete-history file
  (about 1 GB; quick: 100 MB), against the state it leaves behind (a process holding the imported directory,
  minus a bare one).

Run: `.venv/bin/python -m benchmarks.storage_figures [--quick]` (also run at the end of `python -m benchmarks`).
The state is built in-process through the store's own hot path (the same calls the servicer makes), which is
much faster than filling it over gRPC; everything measured afterwards goes through a real server process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = bytes(32)
ROOT_HEX = "0x" + "00" * 32
READY = re.compile(r"serving on (\S+):(\d+)")


@dataclass(frozen=True)
class Sizes:
    validators: int
    history_epochs: int
    tail_records: int
    load_seconds: float
    import_file_bytes: int
    import_keys: int


FULL = Sizes(
    validators=100_000,
    history_epochs=80,
    tail_records=1_000_000,
    load_seconds=6.0,
    import_file_bytes=1_000_000_000,
    import_keys=20_000,
)
QUICK = Sizes(
    validators=100_000,
    history_epochs=8,
    tail_records=200_000,
    load_seconds=3.0,
    import_file_bytes=100_000_000,
    import_keys=4_000,
)


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _pubkey(index: int) -> bytes:
    return index.to_bytes(8, "big") + bytes(40)


def build_state(data_dir: Path, sizes: Sizes) -> dict[str, float]:
    """In a fresh process: fill a store, checkpoint it, append the log tail, close without a final checkpoint.

    Returns the resident set before and after the state was built (the memory figure and its baseline).
    """
    from sidecar.domain import valid_pubkey, valid_signing_root
    from sidecar.store import Store, StoreOptions

    baseline = _rss_bytes()
    store = Store.open_or_create(data_dir, ROOT, StoreOptions(checkpoint_keep=1))
    keys = [valid_pubkey(_pubkey(i)) for i in range(sizes.validators)]
    for start in range(0, len(keys), 10_000):
        store.register_validators(keys[start : start + 10_000])
    root = valid_signing_root(bytes(range(32)))
    last = 0
    for epoch in range(1, sizes.history_epochs + 1):
        for start in range(0, len(keys), 1000):
            decided = store.check_and_record_attestations(
                [(key, epoch - 1, epoch, root) for key in keys[start : start + 1000]]
            )
            last = decided[-1][1]
    store.log.wait_durable(last)
    with_state = _rss_bytes()
    store.save_checkpoint()
    epoch = sizes.history_epochs
    written = 0
    while written < sizes.tail_records:
        epoch += 1
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000][: sizes.tail_records - written]
            if not batch:
                break
            decided = store.check_and_record_attestations([(key, epoch - 1, epoch, root) for key in batch])
            written += len(batch)
            last = decided[-1][1]
    store.log.wait_durable(last)
    store.close(final_checkpoint=False)
    return {"rss_before": baseline, "rss_with_state": with_state, "next_epoch": epoch + 1}


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "serve",
                "--data-dir",
                str(data_dir),
                "--genesis-validators-root",
                ROOT_HEX,
                "--listen",
                "127.0.0.1:0",
                "--checkpoint-interval",
                "0",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.port = 0
        for line in self.process.stderr:
            match = READY.search(line)
            if match:
                self.port = int(match.group(2))
                break
        if not self.port:
            raise RuntimeError("the server did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def seconds_to_serving(self) -> float:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - self.started
                except grpc.RpcError:
                    pass
                time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def _p99_under_load(
    port: int, keys: list[bytes], first_epoch: int, seconds: float, in_flight: int, during: threading.Event | None
) -> tuple[float, int, int]:
    """Drives `in_flight` sequential callers; returns (p99 seconds, calls measured, next epoch).

    With `during`, only calls that start and end while it is set count (the checkpoint is being written)."""
    from grpc import aio

    from slashing_protection.v1 import signing_pb2, signing_pb2_grpc

    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    root = bytes(range(32))
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = signing_pb2_grpc.SlashingProtectionServiceStub(channel)

        async def caller(offset: int) -> None:
            epoch = first_epoch
            index = offset
            while time.monotonic() < deadline:
                key = keys[index % len(keys)]
                index += in_flight
                if index >= len(keys):
                    index = offset
                    epoch += 1
                inside = during is None or during.is_set()
                started = time.perf_counter()
                response = await stub.CheckAndRecordAttestation(
                    signing_pb2.CheckAndRecordAttestationRequest(
                        pubkey=key,
                        source_epoch=epoch - 1,
                        target_epoch=epoch,
                        signing_root=root,
                        genesis_validators_root=ROOT,
                    )
                )
                elapsed = time.perf_counter() - started
                if response.decision.verdict != signing_pb2.VERDICT_ALLOWED:
                    raise RuntimeError(f"load was refused: {response.decision.message}")
                if inside and (during is None or during.is_set()):
                    latencies.append(elapsed)

        await asyncio.gather(*(caller(i) for i in range(in_flight)))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    return p99, len(latencies), first_epoch + 3


def _checkpoints_back_to_back(port: int, stop: threading.Event, writing: threading.Event) -> list[float]:
    import grpc

    from slashing_protection.v1 import admin_pb2, admin_pb2_grpc

    durations = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        while not stop.is_set():
            writing.set()
            started = time.monotonic()
            stub.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=300)
            durations.append(time.monotonic() - started)
            writing.clear()
            time.sleep(0.05)
    return durations


_RSS_NOW = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"


def _resident_kib(code: str) -> int:
    """VmRSS, in KiB, of a fresh interpreter after running `code` (which must print nothing)."""
    done = subprocess.run(
        [sys.executable, "-c", code + "\n" + _RSS_NOW], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


# Runs the sidecar's CLI in this interpreter and, at exit, reports the peak resident set of this process alone.
# Not wait4's ru_maxrss: Linux counts in it the parent's resident set at fork time (the child starts as a copy of
# the harness, which holds hundreds of MiB by the end of a full run), and that hid the import's own peak.
_CLI_REPORTING_PEAK = (
    "import atexit, sys\n"
    "def report():\n"
    "    status = open('/proc/self/status').read()\n"
    "    sys.stderr.write('peak-resident-kib ' + status.split('VmHWM:')[1].split()[0] + '\\n')\n"
    "atexit.register(report)\n"
    "from sidecar.cli import main\n"
    "sys.argv = ['slashing-sidecar', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


def _peak_resident_kib(cli_args: list[str]) -> tuple[int, float]:
    """Runs `slashing-sidecar CLI_ARGS` to the end; returns its peak resident set in KiB (VmHWM, which starts
    afresh at exec) and its wall time."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _CLI_REPORTING_PEAK, *cli_args], capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"slashing-sidecar {' '.join(cli_args)} exited {done.returncode}: {done.stderr[-500:]}")
    peak = re.search(r"^peak-resident-kib (\d+)$", done.stderr, re.MULTILINE)
    if peak is None:
        raise RuntimeError(f"slashing-sidecar {' '.join(cli_args)} did not report its peak: {done.stderr[-500:]}")
    return int(peak.group(1)), seconds


def measure_import_memory(sizes: Sizes, work: Path) -> tuple[str, str, str, str]:
    """Peak memory of an offline import of a complete-history file, against the state it leaves behind."""
    from benchmarks.common import GENESIS_VALIDATORS_ROOT_HEX
    from benchmarks.interchange_docs import complete_history_for_size, write_complete_history_document

    shape = complete_history_for_size(sizes.import_file_bytes, sizes.import_keys)
    path = work / "complete-history.json"
    print(f"writing a complete-history file: {shape.keys:,} keys x {shape.epochs} epochs ...", flush=True)
    file_bytes = write_complete_history_document(path, shape)
    data_dir = work / "imported"
    # The directory exists before the figure (an import into a new directory reads the file twice, validating it
    # whole first; memory is the same, time twice).
    empty = work / "empty.json"
    empty.write_text(
        '{"metadata":{"interchange_format_version":"5","genesis_validators_root":"'
        + GENESIS_VALIDATORS_ROOT_HEX
        + '"},"data":[]}'
    )
    cli = [sys.executable, "-m", "sidecar", "import"]
    subprocess.run([*cli, str(empty), "--data-dir", str(data_dir)], capture_output=True, check=True)
    print(f"importing {file_bytes / 1e9:.2f} GB offline ...", flush=True)
    peak, seconds = _peak_resident_kib(["import", str(path), "--data-dir", str(data_dir)])
    path.unlink()
    bare = _resident_kib("import sidecar.cli, sidecar.store")
    holding = _resident_kib(
        "from pathlib import Path\nfrom sidecar.store import Store\n"
        f"store = Store.open_or_create(Path({str(data_dir)!r}), None)"
    )
    state = max(holding - bare, 1)
    ratio = (peak - bare) / state
    return (
        f"import memory, {file_bytes / 1e9:.2f} GB complete-history file ({shape.keys:,} keys x {shape.epochs} "
        f"epochs, a vote each and a block every {shape.block_every_epochs}), CLI offline, {seconds:.0f} s",
        f"{peak / 1024:,.0f} MiB peak resident, {(peak - bare) / 1024:,.0f} MiB above a bare process",
        f"final state {state / 1024:,.0f} MiB (a process holding the directory, {holding / 1024:,.0f} MiB, minus "
        f"a bare one, {bare / 1024:,.0f} MiB) -> {ratio:.2f}x",
        "≤ 2x the final state: " + ("pass" if ratio <= 2 else "FAIL"),
    )


def measure(sizes: Sizes, work: Path) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    data_dir = work / "state"
    print(
        f"building {sizes.validators:,} validators x {sizes.history_epochs} epochs, then "
        f"{sizes.tail_records:,} records after the checkpoint ...",
        flush=True,
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.storage_figures",
            "--build",
            str(data_dir),
            "--sizes",
            json.dumps(sizes.__dict__),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    state = json.loads(built.stdout.strip().splitlines()[-1])
    state_mb = (state["rss_with_state"] - state["rss_before"]) / 2**20
    rows.append(
        (
            f"memory, {sizes.validators:,} validators x {sizes.history_epochs} epochs of history",
            f"{state['rss_with_state'] / 2**20:,.0f} MiB resident ({state_mb:,.0f} MiB of state)",
            f"process before the state: {state['rss_before'] / 2**20:,.0f} MiB",
            "≤ 1 GB: " + ("pass" if state["rss_with_state"] <= 2**30 else "FAIL"),
        )
    )
    empty = Server(work / "empty")
    empty_seconds = empty.seconds_to_serving()
    empty.stop()
    server = Server(data_dir)
    restart = server.seconds_to_serving()
    rows.append(
        (
            f"restart to SERVING, {sizes.validators:,} validators + {sizes.tail_records:,} log records after the "
            "checkpoint",
            f"{restart:.2f} s",
            f"empty directory: {empty_seconds:.2f} s ({restart / empty_seconds:.1f}x)",
            "≤ 10 s: " + ("pass" if restart <= 10 else "FAIL"),
        )
    )
    try:
        keys = [_pubkey(i) for i in range(sizes.validators)]
        epoch = int(state["next_epoch"])
        quiet_p99, quiet_calls, epoch = asyncio.run(
            _p99_under_load(server.port, keys, epoch, sizes.load_seconds, 8, None)
        )
        stop, writing = threading.Event(), threading.Event()
        durations: list[float] = []
        checkpointer = threading.Thread(
            target=lambda: durations.extend(_checkpoints_back_to_back(server.port, stop, writing))
        )
        checkpointer.start()
        try:
            busy_p99, busy_calls, epoch = asyncio.run(
                _p99_under_load(server.port, keys, epoch + 1, sizes.load_seconds * 2, 8, writing)
            )
        finally:
            stop.set()
            checkpointer.join()
        ratio = busy_p99 / quiet_p99
        rows.append(
            (
                f"decision p99 while checkpointing {sizes.validators:,} validators (8 callers; "
                f"{len(durations)} checkpoints of {max(durations, default=0):.2f} s at most)",
                f"{busy_p99 * 1e3:.2f} ms ({busy_calls:,} calls)",
                f"without a checkpoint: {quiet_p99 * 1e3:.2f} ms ({quiet_calls:,} calls) -> {ratio:.2f}x",
                "≤ 2x: " + ("pass" if ratio <= 2 else "FAIL"),
            )
        )
    finally:
        server.stop()
    rows.append(measure_import_memory(sizes, work))
    return rows


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| figure | sidecar | baseline, same run | target |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage_figures", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller history and log tail")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/storage.md"))
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        print(json.dumps(build_state(args.build, Sizes(**json.loads(args.sizes)))))
        return 0
    sizes = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="storage-figures-"))
    try:
        rows = measure(sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = markdown(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print("\n" + report, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    raise SystemExit(main())
