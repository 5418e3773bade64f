"""The sidecar in child processes: `python -m sidecar serve` started, waited for and signalled (`ServerProcess`),
and the command line run to completion (`run_cli`, or `cli_in_process` to spare an interpreter start).

`ServerProcess` is the one launcher of a real server process, for every tier that needs one (ops, crash, cli,
postgres, the replicas of `tests.support.signing_load`); `tests.support.server.running_server` is the one for a
server inside the test's own process.

How a server is watched:

* Its standard error (standard output too) goes to a file, never a pipe: the refusal log is chatty, and a full
  pipe would stall the server. Only whole lines are matched, so a line still being written is never misread.
* The bound port comes from its ``serving on HOST:PORT`` line (servers listen on port 0).
* It is ready once it has logged ``ready:`` (it reports SERVING to its health service just before) and, on a
  plaintext port, once the gRPC health service says SERVING to us too. A server that exits or takes longer than
  `START_TIMEOUT` fails the wait, and is killed.
* `kill` is SIGKILL and asserts the server was still running; `stop` sends SIGTERM (or SIGINT) and returns the
  exit status, killing the server and failing if it does not exit within `STOP_TIMEOUT`. Callers assert the
  status, and the absence of a traceback in `stderr`, where it matters to them (the CLI tier's teardown does for
  every server it started).
* The environment is the test's, without the ``SLASHING_SIDECAR_*`` options or gRPC log settings a developer
  may have exported: the server sees what an operator's process sees by default.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.cli import main as cli_main
from slashing_protection.v1 import admin_pb2_grpc, interchange_pb2_grpc, signing_pb2_grpc

__all__ = [
    "CLI_TIMEOUT",
    "METRICS_ON",
    "READY",
    "REPOSITORY",
    "SERVING_ON",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "ServerProcess",
    "cli_command",
    "cli_in_process",
    "run_cli",
    "serve_command",
    "serving",
    "sidecar_env",
]

REPOSITORY = Path(__file__).resolve().parents[2]
SERVING_ON = re.compile(r"serving on (\S+):(\d+)")
READY = re.compile(r"ready: version ")
METRICS_ON = re.compile(r"metrics on http://(\S+):(\d+)/metrics")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
CLI_TIMEOUT = 60.0
WILDCARD_HOSTS = ("0.0.0.0", "[::]", "::")
_TLS_OPTIONS = ("--tls-cert", "SLASHING_SIDECAR_TLS_CERT")


def sidecar_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any SLASHING_SIDECAR_* option or gRPC log setting, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SLASHING_SIDECAR_") and key not in ("GRPC_VERBOSITY", "GRPC_TRACE")
    }
    env.update(extra or {})
    return env


def cli_command(*args: str | Path) -> list[str]:
    """`slashing-sidecar ARGS`, run with this interpreter."""
    return [sys.executable, "-m", "sidecar", *map(str, args)]


# ------------------------------------------------------------------------------------------------ one-off commands


def run_cli(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Runs one command to completion as a subprocess; text stdout and stderr. Never a traceback, whatever the
    outcome (asserted)."""
    result = subprocess.run(
        cli_command(*args),
        input=stdin,
        capture_output=True,
        env=sidecar_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    completed = subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stdout, completed.stdout
    return completed


def cli_in_process(*arguments: str) -> tuple[int, str, str]:
    """Runs `slashing-sidecar ARGUMENTS` (verify, export, ...) through the CLI's entry point in this process, to
    save an interpreter start per call; returns (exit status, standard output, standard error)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(arguments))
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------ servers


def serve_command(
    *options: str | Path,
    data_dir: Path | None = None,
    database_url: str | None = None,
    genesis_validators_root: bytes | str | None = None,
    listen: str | None = "127.0.0.1:0",
    prefix: Sequence[str] = (),
) -> list[str]:
    """The `serve` command line: `--data-dir` or `--database-url` (or neither, when `options` or the environment
    name the database), `--genesis-validators-root` (bytes or hex) when given, `--listen` unless None, then
    `options` (later options win). `prefix` runs the server under another program (`eatmydata`, say)."""
    command = [*prefix, *cli_command("serve")]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if database_url is not None:
        command += ["--database-url", database_url]
    if genesis_validators_root is not None:
        root = genesis_validators_root
        command += ["--genesis-validators-root", root if isinstance(root, str) else "0x" + root.hex()]
    if listen is not None:
        command += ["--listen", listen]
    return command + [str(option) for option in options]


class ServerProcess:
    """One `serve` process (see the module doc). Start with `launch`, then `wait_serving`."""

    def __init__(self, process: subprocess.Popen[bytes], command: list[str], log_path: Path, plaintext: bool):
        """Use `launch`."""
        self.process = process
        self.command = command
        self.log_path = log_path
        self.plaintext = plaintext
        self.host = ""
        self.port = 0
        # Set once the exit was seen or caused (stop, wait_exit, kill, ensure_dead): a teardown tells those from a
        # death nobody observed.
        self.returncode: int | None = None
        self._channel: grpc.Channel | None = None

    @classmethod
    def launch(cls, command: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Starts `command` (see `serve_command`) without waiting, its output going to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=REPOSITORY,
                env=sidecar_env(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        plaintext = not any(option in _TLS_OPTIONS for option in (*command, *(env or {})))
        return cls(process, command, log_path, plaintext)

    # ---------------------------------------------------------------- what it wrote

    @property
    def stderr(self) -> str:
        """Everything the server wrote so far (standard error, and standard output)."""
        return self.log_path.read_text(errors="replace")

    @property
    def lines(self) -> list[str]:
        """The whole lines written so far (a line still being written is left out)."""
        return self.stderr.split("\n")[:-1]

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first whole line matching `pattern`; fails if the server exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None  # before reading: a line written before the exit is seen
            for line in self.lines:
                match = pattern.search(line)
                if match:
                    return match
            if exited:
                raise AssertionError(
                    f"serve exited with {self.process.returncode} before {pattern.pattern!r}:\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} from serve within {timeout} s:\n{self.stderr}")
            time.sleep(0.02)

    def ready_line(self) -> str:
        """The server's "ready:" line (what recovery found)."""
        return self.wait_for(READY, timeout=0).string

    def metrics_port(self) -> int:
        return int(self.wait_for(METRICS_ON).group(2))

    # ---------------------------------------------------------------- serving

    def wait_serving(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Waits for the bound port, then until the server is ready (see the module doc); kills it and fails if
        it exits first or takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            match = self.wait_for(SERVING_ON, timeout)
            self.host, self.port = match.group(1), int(match.group(2))
            assert self.port != 0, match.string
            self.wait_for(READY, max(deadline - time.monotonic(), 0))
            if self.plaintext:
                self.wait_health(health_pb2.HealthCheckResponse.SERVING, max(deadline - time.monotonic(), 0))
        except BaseException:
            self.ensure_dead()
            raise
        return self

    @property
    def address(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind is reached on the loopback)."""
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        return f"{host}:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        """The data directory the command names (None: a database URL, or one named by the environment)."""
        if "--data-dir" not in self.command:
            return None
        return Path(self.command[self.command.index("--data-dir") + 1])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def channel(self) -> grpc.Channel:
        """A plaintext channel to the server, opened on first use; it stays open across a kill (calls fail with
        UNAVAILABLE, as a validator client would see) until `close_channel`."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return self._channel

    @property
    def signing(self) -> signing_pb2_grpc.SlashingProtectionServiceStub:
        return signing_pb2_grpc.SlashingProtectionServiceStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def interchange(self) -> interchange_pb2_grpc.InterchangeServiceStub:
        return interchange_pb2_grpc.InterchangeServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    def wait_health(self, wanted: int, timeout: float = START_TIMEOUT) -> None:
        """Until the gRPC health service reports `wanted`; fails if the server exits or time runs out first."""
        deadline = time.monotonic() + timeout
        status = None
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.stderr[-4000:]}")
            try:
                status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            except grpc.RpcError:
                status = None
            if status == wanted:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"health did not become {wanted} within {timeout} s (last {status})")
            time.sleep(0.02)

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ---------------------------------------------------------------- ending

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signals the server (SIGTERM: a graceful shutdown, drain and final checkpoint) and returns its exit
        status; kills it and fails if it has not exited within `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.wait_exit(timeout, f"of signal {signum}")

    def wait_exit(self, timeout: float = STOP_TIMEOUT, after: str = "(no signal sent)") -> int:
        """The exit status once the server has exited (a refused start, a signal the test sent itself); kills it
        and fails if it is still running after `timeout`."""
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve did not exit within {timeout} s {after}:\n{self.stderr}") from None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed, the kernel drops the directory lock. Asserts the
        server was still running until then (an earlier death would be a finding)."""
        exited_by_itself = self.process.poll()
        self.process.send_signal(signal.SIGKILL)
        self.returncode = self.process.wait(timeout=30)
        assert exited_by_itself is None and self.returncode == -signal.SIGKILL, (
            f"serve was not running when killed (exit status {self.returncode}):\n{self.stderr[-4000:]}"
        )

    def terminate_then_kill(self, delay: float) -> int:
        """SIGTERM, then SIGKILL `delay` seconds later unless the graceful shutdown finished first, as a
        supervisor's grace period would. Returns the exit status: 0 or -SIGKILL."""
        assert self.process.poll() is None, f"serve was not running:\n{self.stderr[-4000:]}"
        self.process.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.returncode = self.process.wait(timeout=30)
        return self.returncode

    def ensure_dead(self) -> None:
        """For a teardown, whatever state the test left the server in: SIGKILL if it still runs, channel closed."""
        if self.process.poll() is None:
            self.process.kill()
            self.returncode = self.process.wait(timeout=30)
        self.close_channel()


@contextlib.contextmanager
def serving(command: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """A server launched and ready; killed at the end if the test did not stop it."""
    server = ServerProcess.launch(command, log_path, env)
    try:
        yield server.wait_serving()
    finally:
        server.ensure_dead()
