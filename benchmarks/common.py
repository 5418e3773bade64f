"""What every benchmark shares: the synthetic keys, the request builders, statistics, and server processes.

Every request the load generator sends must be ALLOWED-able by a correct server: pubkeys are 48 bytes, roots
32 bytes, one fixed genesis validators root, and each validator's attestations have strictly increasing target
epochs with ``source_epoch = target_epoch - 1``. Validator ``i`` of a run is always :func:`pubkey` ``(i)``; each
scenario draws its own index range, so scenarios never share history.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slashing_protection.v1 import admin_pb2, admin_pb2_grpc, signing_pb2

GENESIS_VALIDATORS_ROOT = hashlib.sha256(b"slashing-sidecar benchmark genesis validators root").digest()
GENESIS_VALIDATORS_ROOT_HEX = "0x" + GENESIS_VALIDATORS_ROOT.hex()

# The regex the harness waits for on a server's stdout or stderr (the sidecar logs it on stderr).
SERVING_LINE = re.compile(r"serving on (\S+):(\d+)")

# Never route benchmark traffic through a proxy named in the environment: it must stay on 127.0.0.1.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

REPO_ROOT = Path(__file__).resolve().parent.parent

REGISTER_CHUNK = 10_000  # 10,000 keys = 480 kB, well under gRPC's default 4 MiB message limit


# --- synthetic data ----------------------------------------------------------------------------------------------


def pubkey(index: int) -> bytes:
    """The 48-byte public key of synthetic validator ``index``; distinct for distinct indexes.

    The top bits are those of a compressed, non-infinity BLS12-381 G1 point, so the key at least looks like one.
    """
    digest = bytearray(hashlib.sha384(b"bench-validator/" + index.to_bytes(8, "big")).digest())
    digest[0] = (digest[0] & 0x1F) | 0x80
    return bytes(digest)


def pubkeys(first: int, count: int) -> list[bytes]:
    return [pubkey(i) for i in range(first, first + count)]


def signing_root(validator_index: int, target_epoch: int) -> bytes:
    """A 32-byte signing root unique to (validator, epoch), never all zeros."""
    return (validator_index.to_bytes(8, "big") + target_epoch.to_bytes(8, "big")).rjust(32, b"\x5a")


def attestation_request(
    key: bytes, validator_index: int, target_epoch: int
) -> signing_pb2.CheckAndRecordAttestationRequest:
    return signing_pb2.CheckAndRecordAttestationRequest(
        pubkey=key,
        source_epoch=target_epoch - 1,
        target_epoch=target_epoch,
        signing_root=signing_root(validator_index, target_epoch),
        genesis_validators_root=GENESIS_VALIDATORS_ROOT,
    )


def attestations_request(
    keys: Sequence[bytes], first_index: int, target_epoch: int
) -> signing_pb2.CheckAndRecordAttestationsRequest:
    """A batch naming each of ``keys`` (distinct) once, all at ``target_epoch``."""
    return signing_pb2.CheckAndRecordAttestationsRequest(
        attestations=[attestation_request(key, first_index + i, target_epoch) for i, key in enumerate(keys)]
    )


# --- statistics --------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (which need not be sorted); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --- process CPU accounting --------------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (all threads), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (from ``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


class CpuMeter:
    """CPU used by a process between ``start()`` and ``stop()``, in cores (CPU seconds per wall second)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu0 = 0.0
        self._wall0 = 0.0
        self.cores: float | None = None

    def start(self) -> None:
        self._cpu0 = process_cpu_seconds(self.pid) or 0.0
        self._wall0 = time.monotonic()

    def stop(self) -> float | None:
        cpu = process_cpu_seconds(self.pid)
        wall = time.monotonic() - self._wall0
        self.cores = None if cpu is None or wall <= 0 else (cpu - self._cpu0) / wall
        return self.cores


async def wait_until_idle(pid: int, *, quiet_cores: float = 0.05, timeout_s: float = 15.0) -> None:
    """Waits until process ``pid`` stops burning CPU (e.g. finishing work whose callers were cancelled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meter = CpuMeter(pid)
        meter.start()
        await asyncio.sleep(0.2)
        cores = meter.stop()
        if cores is None or cores < quiet_cores:
            return


# --- gRPC helpers ------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        yield channel
    finally:
        await channel.close()


async def register_validators(address: str, keys: Iterable[bytes], *, timeout_s: float = 120.0) -> None:
    """Registers ``keys`` through ``AdminService.RegisterValidators``, in chunks under the message limit."""
    batch: list[bytes] = []
    async with open_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for key in keys:
            batch.append(key)
            if len(batch) == REGISTER_CHUNK:
                await stub.RegisterValidators(
                    admin_pb2.RegisterValidatorsRequest(pubkeys=batch), timeout=timeout_s
                )
                batch = []
        if batch:
            await stub.RegisterValidators(admin_pb2.RegisterValidatorsRequest(pubkeys=batch), timeout=timeout_s)


async def wait_serving(address: str, *, timeout_s: float, poll_s: float = 0.002) -> float:
    """Polls the standard health service until the overall server reports SERVING; returns the monotonic time.

    Raises ``TimeoutError`` after ``timeout_s``; a server without a health service never becomes ready.
    """
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer"
    async with open_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic()
                last_problem = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.aio.AioRpcError as error:
                last_problem = f"{error.code().name}: {error.details()}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not SERVING after {timeout_s:.0f} s ({last_problem})")
            await asyncio.sleep(poll_s)


# --- server subprocesses -----------------------------------------------------------------------------------------


class ServerStartError(Exception):
    """A server process exited, or never became ready."""


@dataclass
class StartTimes:
    spawned: float  # monotonic time just before the process was created
    line_seen: float  # the "serving on" line was read
    serving: float  # the health service first said SERVING

    @property
    def to_serving_s(self) -> float:
        return self.serving - self.spawned


_LIVE: set[ServerProcess] = set()  # strong references: a server must not outlive its object unnoticed


@atexit.register
def _kill_leftovers() -> None:
    """A harness that dies leaves no server behind."""
    for server in list(_LIVE):
        server.kill()


class ServerProcess:
    """A gRPC server in a subprocess that announces ``serving on HOST:PORT`` on stdout or stderr.

    Both pipes are drained by threads for the whole life of the process, so a chatty server never blocks on a
    full pipe; the last lines are kept to explain a failure.
    """

    def __init__(self, argv: Sequence[str], *, name: str, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.name = name
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.times: StartTimes | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=40)
        self._address_found = threading.Event()
        self._line_time = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _drain(self, stream: object) -> None:
        assert hasattr(stream, "readline")
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self._lines.append(line)
            if not self._address_found.is_set():
                match = SERVING_LINE.search(line)
                if match:
                    self.address = f"{match.group(1)}:{match.group(2)}"
                    self._line_time = time.monotonic()
                    self._address_found.set()

    async def start(self, *, timeout_s: float = 60.0) -> StartTimes:
        """Starts the process and waits for its line, then for health SERVING; raises ServerStartError."""
        env = subprocess_env()
        spawned = time.monotonic()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=env,
        )
        _LIVE.add(self)
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._drain, args=(stream,), daemon=True).start()
        deadline = spawned + timeout_s
        while not self._address_found.is_set():
            if self.process.poll() is not None:
                await asyncio.sleep(0.05)  # let the drain threads catch the last words
                raise ServerStartError(
                    f"{self.name} exited with status {self.process.returncode}: {self.last_words()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(f"{self.name} printed no 'serving on' line within {timeout_s:.0f} s")
            await asyncio.sleep(0.002)
        try:
            serving = await wait_serving(self.address, timeout_s=max(1.0, deadline - time.monotonic()))
        except TimeoutError as error:
            self.kill()
            raise ServerStartError(f"{self.name}: {error}; {self.last_words()}") from error
        self.times = StartTimes(spawned=spawned, line_seen=self._line_time, serving=serving)
        return self.times

    def last_words(self) -> str:
        lines = [line for line in self._lines if line.strip()]
        return " | ".join(lines[-3:]) if lines else "(no output)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        _LIVE.discard(self)

    def stop(self, *, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (a graceful drain); SIGKILL after ``timeout_s``. Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        _LIVE.discard(self)
        return self.process.returncode


def subprocess_env() -> dict[str, str]:
    """The environment for servers and CLIs: unbuffered, with the repository importable (``benchmarks`` is not
    an installed package)."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(
        os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    )


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
