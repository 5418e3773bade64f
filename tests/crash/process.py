"""A real sidecar in a child process: start it, wait until SERVING, kill it with SIGKILL, or stop it with SIGTERM.

Standard error goes to a file (the refusal log is chatty, and a full pipe would stall the server); the port is
read from the ``serving on HOST:PORT`` line, readiness from the gRPC health service. Offline commands (`verify`)
run through the CLI's own entry point in the test process.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.cli import main as cli_main
from slashing_protection.v1 import admin_pb2_grpc, signing_pb2_grpc

REPOSITORY = Path(__file__).resolve().parents[2]
SERVING_LINE = re.compile(r"serving on (\S+):(\d+)")
READY_LINE = re.compile(r"ready: .*")
CHECKPOINT_OR_READY_LINE = re.compile(
    r"^(\S+)Z \S+ +sidecar\.server: (?:ready: |checkpoint \S+: \d+ validators)", re.M
)
START_TIMEOUT = 30.0


def serve_command(data_dir: Path, genesis_validators_root: bytes, *options: str) -> list[str]:
    """The `slashing-sidecar serve` command line, run with this interpreter."""
    return [
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        "--data-dir",
        str(data_dir),
        "--genesis-validators-root",
        "0x" + genesis_validators_root.hex(),
        "--listen",
        "127.0.0.1:0",
        *options,
    ]


def offline_command(*arguments: str) -> tuple[int, str, str]:
    """Runs `slashing-sidecar ARGUMENTS` (verify, ...) through the CLI's entry point, in this process to save
    an interpreter start per call; returns (exit status, standard output, standard error)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(arguments))
    return code, out.getvalue(), err.getvalue()


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    channel: grpc.Channel
    signing: signing_pb2_grpc.SlashingProtectionServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def start(cls, command: list[str], log_path: Path) -> ServerProcess:
        """Starts the server and returns once its health service says SERVING (recovery done)."""
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, cwd=REPOSITORY, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            port = _wait_for_port(process, log_path)
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            server = cls(
                process=process,
                log_path=log_path,
                port=port,
                channel=channel,
                signing=signing_pb2_grpc.SlashingProtectionServiceStub(channel),
                admin=admin_pb2_grpc.AdminServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
            )
            server.wait_for_health(health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return server

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready_line(self) -> str:
        match = READY_LINE.search(self.log_text())
        assert match is not None, f"no 'ready:' line in the server log:\n{self.log_text()[-4000:]}"
        return match.group(0)

    def wait_for_health(self, wanted: int, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            except grpc.RpcError:
                status = None
            if status == wanted:
                return
            time.sleep(0.02)
        raise AssertionError(f"health did not become {wanted} within {timeout} s (last {status})")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed, the kernel drops the directory lock. The channel
        stays open (calls fail with UNAVAILABLE) until :meth:`close_channel`, so clients in flight see what a
        validator client would."""
        exited_by_itself = self.process.poll()
        self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(timeout=30)
        assert exited_by_itself is None and code == -signal.SIGKILL, (
            f"the server was not running when killed (exit status {code}):\n{self.log_text()[-4000:]}"
        )

    def terminate_then_kill(self, delay: float) -> int:
        """SIGTERM, then SIGKILL `delay` seconds later unless the graceful shutdown (drain, final checkpoint)
        finished first, as a supervisor's grace period would. Returns the exit status: 0 or -SIGKILL."""
        assert self.process.poll() is None, f"the server was not running:\n{self.log_text()[-4000:]}"
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            return self.process.wait(timeout=30)

    def close_channel(self) -> None:
        self.channel.close()

    def stop(self) -> int:
        """SIGTERM: graceful shutdown (drain, final checkpoint). Returns the exit status; the channel stays open
        until :meth:`close_channel`, as for :meth:`kill`."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def ensure_dead(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.channel.close()


def kill_while_starting(command: list[str], log_path: Path, delay: float) -> str:
    """Starts a server and SIGKILLs it `delay` seconds after it bound its port, i.e. during recovery (loading the
    checkpoint, replaying, repairing a torn tail, opening the log) or just after. Returns how far it got."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPOSITORY, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(process, log_path)
        time.sleep(delay)
    finally:
        exited_by_itself = process.poll()
        process.send_signal(signal.SIGKILL)
        code = process.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    assert exited_by_itself is None and code == -signal.SIGKILL, f"the server exited with {code}:\n{text[-4000:]}"
    return "after recovery" if READY_LINE.search(text) else "during recovery"


def last_checkpoint_or_ready(log_text: str) -> float | None:
    """Unix time of the server's last "ready:" or "checkpoint ...: N validators" line: the scheduled checkpoint
    loop starts its next checkpoint one interval after it."""
    times = [
        datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        for match in CHECKPOINT_OR_READY_LINE.finditer(log_text)
    ]
    return max(times, default=None)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = SERVING_LINE.search(log_path.read_text(errors="replace"))
        if match is not None:
            return int(match.group(2))
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode} before serving:\n{log_path.read_text(errors='replace')}"
            )
        time.sleep(0.02)
    raise AssertionError(f"no 'serving on' line within {START_TIMEOUT} s:\n{log_path.read_text(errors='replace')}")


def leftover_files(data_dir: Path) -> dict[str, int]:
    """The temporary files a kill left behind: a checkpoint or a new segment caught half-written."""
    return {
        "checkpoint.tmp": len(list((data_dir / "checkpoints").glob("*.ckpt.tmp"))),
        "log.tmp": len(list((data_dir / "log").glob("*.log.tmp"))),
    }
