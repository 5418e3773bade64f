"""The CLI tier: the real `slashing-sidecar` command run as a subprocess (`sys.executable -m sidecar`), on real
files under `tmp_path`.

`run_cli` runs one command to completion. `serve` / `module_serve` start `serve` on `--listen 127.0.0.1:0`, read
the bound port from the `serving on HOST:PORT` log line, wait until `health` exits 0, and on teardown send
SIGTERM and assert a clean exit (code 0, no traceback).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slashing_protection.v1 import interchange_pb2, interchange_pb2_grpc, signing_pb2, signing_pb2_grpc

# The contract's genesis validators roots, written out here rather than imported, so a wrong table in
# sidecar/networks.py shows up.
NETWORK_ROOTS = {
    "mainnet": "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95",
    "sepolia": "0xd8ea171f3c94aea21ebc42a1ed61052acf3f9209c00e4efbaaddac09ed9b8078",
    "holesky": "0x9143aa7c615a7f7115e2b6aac319c03529df8242ae705fba9df39b79c59fa8b1",
    "hoodi": "0x212f13fc4df078b6cb7db228f1c8307566dcecf900867401a92023d7ba99cb5f",
}
MAINNET = NETWORK_ROOTS["mainnet"]
OTHER_ROOT = "0x" + "11" * 32

SERVING_ON = re.compile(r"serving on (\S+):(\d+)")
# A human log line: "2026-01-01T00:00:00.000Z INFO    logger: message".
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
CLI_TIMEOUT = 60.0
START_TIMEOUT = 60.0


def pubkey(n: int) -> str:
    """A distinct, valid-looking 48-byte key as 0x-hex."""
    return "0x" + bytes([n]).hex() * 48


def root32(n: int) -> str:
    return "0x" + bytes([n]).hex() * 32


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any SLASHING_SIDECAR_* leaking in, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLASHING_SIDECAR_")}
    env.update(extra or {})
    return env


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sidecar", *map(str, args)]


def run_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Runs one command to completion; text stdout/stderr. Never a traceback, whatever the outcome."""
    result = subprocess.run(
        cli_command(*args),
        input=stdin,
        capture_output=True,
        env=cli_env(env),
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


def run_ok(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, **kwargs)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result


def error_line(stderr: str) -> str:
    """The one line of stderr that is not a log line; fails unless there is exactly one."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{stderr}"
    return lines[0]


def assert_fails(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """Non-zero (or exactly `code`) exit with one error line on stderr; returns that line."""
    if code is None:
        assert result.returncode != 0, f"expected failure, exit 0\n{result.stdout}\n{result.stderr}"
    else:
        assert result.returncode == code, f"expected exit {code}, got {result.returncode}\n{result.stderr}"
    return error_line(result.stderr)


# ---------------------------------------------------------------- serve as a subprocess


@dataclass
class Sidecar:
    process: subprocess.Popen[bytes]
    stderr_path: Path
    data_dir: Path | None
    host: str = ""
    port: int = 0
    returncode: int | None = None

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "[::]", "::") else self.host
        return f"{host}:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signals the server and waits for it; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            message = f"serve did not exit within {timeout} s of signal {signum}\n{self.stderr}"
            raise AssertionError(message) from None
        return self.returncode


def launch_serve(
    workdir: Path, data_dir: Path | None, *args: str | Path, env: dict[str, str] | None = None
) -> Sidecar:
    """Starts `serve` (without waiting). `--listen 127.0.0.1:0` unless `args` or `env` name a listen address."""
    workdir.mkdir(parents=True, exist_ok=True)
    stderr_path = workdir / f"serve-{time.monotonic_ns()}.stderr"
    command: list[str | Path] = ["serve"]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    if "--listen" not in args and "SLASHING_SIDECAR_LISTEN" not in (env or {}):
        command += ["--listen", "127.0.0.1:0"]
    command += list(args)
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            cli_command(*command), stdout=subprocess.DEVNULL, stderr=stderr, env=cli_env(env)
        )
    return Sidecar(process=process, stderr_path=stderr_path, data_dir=data_dir)


def _grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(sidecar: Sidecar, timeout: float = START_TIMEOUT) -> Sidecar:
    """Parses the port from the log, then waits until `health` exits 0 (polling in-process first, so that a
    slow start costs no extra CLI runs)."""
    deadline = time.monotonic() + timeout
    while True:
        match = SERVING_ON.search(sidecar.stderr)
        if match:
            sidecar.host, sidecar.port = match.group(1), int(match.group(2))
            break
        if not sidecar.running:
            raise AssertionError(
                f"serve exited with {sidecar.process.returncode} before listening:\n{sidecar.stderr}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no 'serving on' line within {timeout} s:\n{sidecar.stderr}")
        time.sleep(0.05)
    while True:
        if not sidecar.running:
            raise AssertionError(
                f"serve exited with {sidecar.process.returncode} before SERVING:\n{sidecar.stderr}"
            )
        if _grpc_serving(sidecar.address) and run_cli("health", "--server", sidecar.address).returncode == 0:
            return sidecar
        if time.monotonic() > deadline:
            raise AssertionError(f"health never exited 0 within {timeout} s:\n{sidecar.stderr}")
        time.sleep(0.1)


def wait_exit(sidecar: Sidecar, timeout: float = START_TIMEOUT) -> int:
    """For a `serve` expected to refuse: its exit code once it has exited."""
    try:
        sidecar.returncode = sidecar.process.wait(timeout)
    except subprocess.TimeoutExpired:
        sidecar.stop(signal.SIGKILL)
        raise AssertionError(f"serve kept running; expected a refusal:\n{sidecar.stderr}") from None
    return sidecar.returncode


class ServeFactory:
    """Starts servers and, at teardown, stops those still running: SIGTERM, exit 0, no traceback."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Sidecar] = []

    def __call__(self, data_dir: Path | None, *args: str | Path, env: dict[str, str] | None = None) -> Sidecar:
        sidecar = launch_serve(self.workdir, data_dir, *args, env=env)
        self.started.append(sidecar)
        try:
            return wait_serving(sidecar)
        except BaseException:
            sidecar.stop(signal.SIGKILL)
            raise

    def launch(self, data_dir: Path | None, *args: str | Path, env: dict[str, str] | None = None) -> Sidecar:
        """Starts without waiting (for starts expected to be refused)."""
        sidecar = launch_serve(self.workdir, data_dir, *args, env=env)
        self.started.append(sidecar)
        return sidecar

    def close(self) -> None:
        problems = []
        for sidecar in self.started:
            if "Traceback" in sidecar.stderr:
                problems.append(f"traceback in serve's stderr:\n{sidecar.stderr}")
            if sidecar.returncode is not None:  # the test stopped it, or saw it exit
                continue
            if not sidecar.running:
                code = sidecar.process.returncode
                problems.append(f"serve died during the test (exit {code}):\n{sidecar.stderr}")
                continue
            code = sidecar.stop()
            if code != 0:
                problems.append(f"serve exited {code} on SIGTERM:\n{sidecar.stderr}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    factory = ServeFactory(tmp_path / "serve-logs")
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeFactory]:
    factory = ServeFactory(tmp_path_factory.mktemp("serve-logs"))
    yield factory
    factory.close()


# ---------------------------------------------------------------- signing through the gRPC API


class Signer:
    def __init__(self, address: str, genesis_validators_root: str = MAINNET) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = signing_pb2_grpc.SlashingProtectionServiceStub(self.channel)
        self.root = bytes.fromhex(genesis_validators_root[2:])

    def block(self, key: str, slot: int, signing_root: bytes | None = None) -> signing_pb2.SigningDecision:
        request = signing_pb2.CheckAndRecordBlockRequest(
            pubkey=bytes.fromhex(key[2:]),
            slot=slot,
            signing_root=signing_root if signing_root is not None else slot.to_bytes(32, "big"),
            genesis_validators_root=self.root,
        )
        response: signing_pb2.CheckAndRecordBlockResponse = self.stub.CheckAndRecordBlock(request, timeout=30)
        return response.decision

    def attestation(
        self, key: str, source: int, target: int, signing_root: bytes | None = None
    ) -> signing_pb2.SigningDecision:
        request = signing_pb2.CheckAndRecordAttestationRequest(
            pubkey=bytes.fromhex(key[2:]),
            source_epoch=source,
            target_epoch=target,
            signing_root=signing_root
            if signing_root is not None
            else (source * 1000 + target).to_bytes(32, "big"),
            genesis_validators_root=self.root,
        )
        response: signing_pb2.CheckAndRecordAttestationResponse = self.stub.CheckAndRecordAttestation(
            request, timeout=30
        )
        return response.decision

    def close(self) -> None:
        self.channel.close()


ALLOWED = signing_pb2.VERDICT_ALLOWED
REFUSED = signing_pb2.VERDICT_REFUSED


# ---------------------------------------------------------------- EIP-3076 documents


def interchange(
    validators: Sequence[tuple[str, Sequence[dict[str, str]], Sequence[dict[str, str]]]],
    root: str = MAINNET,
    version: str = "5",
) -> dict[str, Any]:
    return {
        "metadata": {"interchange_format_version": version, "genesis_validators_root": root},
        "data": [
            {"pubkey": key, "signed_blocks": list(blocks), "signed_attestations": list(attestations)}
            for key, blocks, attestations in validators
        ],
    }


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


# EIP-3076 format version 5, written from the EIP (not the project's schema): hex and decimal strings exactly.
_HEX48 = {"type": "string", "pattern": "^0x[0-9a-f]{96}$"}
_HEX32 = {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}
_U64 = {"type": "string", "pattern": "^(0|[1-9][0-9]{0,19})$"}
EIP3076_V5_SCHEMA = {
    "type": "object",
    "required": ["metadata", "data"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["interchange_format_version", "genesis_validators_root"],
            "properties": {"interchange_format_version": {"const": "5"}, "genesis_validators_root": _HEX32},
        },
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pubkey", "signed_blocks", "signed_attestations"],
                "properties": {
                    "pubkey": _HEX48,
                    "signed_blocks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["slot"],
                            "properties": {"slot": _U64, "signing_root": _HEX32},
                            "additionalProperties": False,
                        },
                    },
                    "signed_attestations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["source_epoch", "target_epoch"],
                            "properties": {"source_epoch": _U64, "target_epoch": _U64, "signing_root": _HEX32},
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def assert_eip3076_v5(data: bytes | str, root: str = MAINNET) -> dict[str, Any]:
    """Parses an exported document, checks it is EIP-3076 v5 for `root` with distinct keys; returns it."""
    document = json.loads(data)
    jsonschema.validate(document, EIP3076_V5_SCHEMA)
    assert document["metadata"]["genesis_validators_root"] == root
    keys = [item["pubkey"] for item in document["data"]]
    assert len(keys) == len(set(keys)), f"a key appears twice: {keys}"
    return document  # type: ignore[no-any-return]


def grpc_export(address: str) -> bytes:
    """The whole interchange document, through the gRPC API (no CLI run)."""
    with grpc.insecure_channel(address) as channel:
        stub = interchange_pb2_grpc.InterchangeServiceStub(channel)
        stream = stub.ExportInterchange(interchange_pb2.ExportInterchangeRequest(), timeout=30)
        return b"".join(response.chunk for response in stream)


def export_bytes(*target: str | Path) -> bytes:
    """`export -` against `--data-dir DIR` or `--server ADDR`: the document written to stdout."""
    result = subprocess.run(cli_command("export", "-", *target), capture_output=True, env=cli_env(), check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    return result.stdout
