"""The CLI tier: the real `slashing-sidecar` command run as a subprocess (`sys.executable -m sidecar`), on real
files under `tmp_path`.

`run_cli` (`tests.support.processes`) runs one command to completion. `serve` / `module_serve` start `serve` on
`--listen 127.0.0.1:0` through the one launcher (`tests.support.processes.ServerProcess`: the port from the
`serving on HOST:PORT` line, ready once SERVING), also wait until `health` exits 0, and on teardown send SIGTERM
and assert a clean exit (code 0, no traceback).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from slashing_protection.v1 import interchange_pb2, interchange_pb2_grpc, signing_pb2, signing_pb2_grpc
from tests.support.processes import START_TIMEOUT, ServerProcess, cli_command, run_cli, serve_command, sidecar_env
from tests.support.requests import attestation_request, block_request

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

# A human log line: "2026-01-01T00:00:00.000Z INFO    logger: message".
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")


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


class ServeFactory:
    """Starts `serve` processes for the tier and checks them at teardown: no traceback in any server's output, none
    died unobserved, and each still running stops on SIGTERM with exit 0."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[ServerProcess] = []

    def __call__(
        self, data_dir: Path | None, *args: str | Path, env: dict[str, str] | None = None
    ) -> ServerProcess:
        """Starts and waits until SERVING, as the gRPC health service and then the `health` command say."""
        server = self.launch(data_dir, *args, env=env).wait_serving()
        deadline = time.monotonic() + START_TIMEOUT
        while run_cli("health", "--server", server.address).returncode != 0:
            if time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise AssertionError(f"health never exited 0 within {START_TIMEOUT} s:\n{server.stderr}")
            time.sleep(0.1)
        return server

    def launch(self, data_dir: Path | None, *args: str | Path, env: dict[str, str] | None = None) -> ServerProcess:
        """Starts without waiting (for starts expected to be refused). `--listen 127.0.0.1:0` unless `args` or
        `env` name a listen address."""
        listen = None if "--listen" in args or "SLASHING_SIDECAR_LISTEN" in (env or {}) else "127.0.0.1:0"
        command = serve_command(*args, data_dir=data_dir, listen=listen)
        server = ServerProcess.launch(command, self.workdir / f"serve-{time.monotonic_ns()}.stderr", env)
        self.started.append(server)
        return server

    def close(self) -> None:
        problems = []
        for server in self.started:
            if "Traceback" in server.stderr:
                problems.append(f"traceback in serve's stderr:\n{server.stderr}")
            if server.returncode is not None:  # the test stopped it, or saw it exit
                continue
            if not server.running:
                code = server.process.returncode
                problems.append(f"serve died during the test (exit {code}):\n{server.stderr}")
                continue
            code = server.stop()
            if code != 0:
                problems.append(f"serve exited {code} on SIGTERM:\n{server.stderr}")
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
        request = block_request(
            bytes.fromhex(key[2:]),
            slot,
            signing_root if signing_root is not None else slot.to_bytes(32, "big"),
            self.root,
        )
        response: signing_pb2.CheckAndRecordBlockResponse = self.stub.CheckAndRecordBlock(request, timeout=30)
        return response.decision

    def attestation(
        self, key: str, source: int, target: int, signing_root: bytes | None = None
    ) -> signing_pb2.SigningDecision:
        request = attestation_request(
            bytes.fromhex(key[2:]),
            source,
            target,
            signing_root if signing_root is not None else (source * 1000 + target).to_bytes(32, "big"),
            self.root,
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
    result = subprocess.run(
        cli_command("export", "-", *target), capture_output=True, env=sidecar_env(), check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    return result.stdout
