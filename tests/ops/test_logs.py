"""What a real `serve` process writes on standard error, in both `--log-format`s.

The data directory is prepared in process with three registered validators, so the startup line has something
to report; the server then runs as a subprocess with `--strategy minimal` (not the default, so a startup line
that ignored the option would be caught).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar import __version__
from slashing_protection.v1 import signing_pb2
from tests.ops.support import SERVE_OPTIONS, Certificates, Client, insecure_client
from tests.support.keys import pubkey, signing_root
from tests.support.processes import ServerProcess, serve_command
from tests.support.requests import batch_request
from tests.support.server import running_server

pytestmark = pytest.mark.timeout(60)

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +sidecar(\.\w+)*: \S.*$"
)
JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"debug", "info", "warning", "error", "critical"}
ROOT_HEX = "0x" + "00" * 32
LOADED = [pubkey(50_000 + i) for i in range(3)]
BLOCK_KEY, VOTE_A, VOTE_B = LOADED


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    with running_server(directory) as running:
        Client(running.channel).register(*LOADED)
    return directory


class NotJsonLineError(AssertionError):
    pass


def json_record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        raise NotJsonLineError(f"not a JSON object: {line!r}") from None
    if not isinstance(record, dict):
        raise NotJsonLineError(f"not a JSON object: {line!r}")
    return record


def provoke_refusals(address: str) -> None:
    """One refused block, and a batch with two refused attestations: three refusals, one per key."""
    with insecure_client(address) as client:
        assert client.block(BLOCK_KEY, 7, signing_root(1)).verdict == signing_pb2.VERDICT_ALLOWED
        assert client.block(BLOCK_KEY, 7, signing_root(2)).reason == signing_pb2.REASON_DOUBLE_PROPOSAL
        for key in (VOTE_A, VOTE_B):
            assert client.attestation(key, 1, 2, signing_root(3)).verdict == signing_pb2.VERDICT_ALLOWED
        batch = client.signing.CheckAndRecordAttestations(
            batch_request([(VOTE_A, 1, 2, signing_root(4)), (VOTE_B, 1, 2, signing_root(4))]), timeout=10
        )
        assert [d.reason for d in batch.decisions] == [signing_pb2.REASON_DOUBLE_VOTE] * 2


def run_session(data_dir: Path, *args: str) -> list[str]:
    """Starts, provokes refusals, stops with SIGTERM; returns every stderr line."""
    command = serve_command(*SERVE_OPTIONS, "--strategy", "minimal", *args, data_dir=data_dir)
    server = ServerProcess.launch(command, data_dir.parent / "serve.log")
    try:
        server.wait_serving()
        provoke_refusals(server.address)
        assert server.stop(signal.SIGTERM) == 0, server.stderr
    finally:
        server.ensure_dead()
    return server.lines


def assert_startup_line_says_everything(message: str, data_dir: Path) -> None:
    assert f"version {__version__}" in message
    assert str(data_dir) in message
    assert ROOT_HEX in message
    assert "strategy minimal" in message
    assert "3 validators loaded" in message
    assert re.search(r"recovery took \d+\.\d+ s", message), message


def test_text_format_is_the_default(data_dir: Path) -> None:
    lines = run_session(data_dir)
    assert len(lines) >= 4, lines
    for line in lines:
        assert TEXT_LINE.match(line), line
    (startup,) = [line for line in lines if " ready: " in line]
    assert_startup_line_says_everything(startup, data_dir)
    for key, words in ((BLOCK_KEY, "double proposal"), (VOTE_A, "double vote"), (VOTE_B, "double vote")):
        mentions = [line for line in lines if key.hex() in line]
        assert len(mentions) == 1, mentions  # logged once; allowed decisions are not logged per key
        assert " WARNING " in mentions[0] and "sidecar.refusals" in mentions[0], mentions
        assert words in mentions[0], mentions


def test_json_format_is_one_object_per_line(data_dir: Path) -> None:
    lines = run_session(data_dir, "--log-format", "json")
    records = []
    for line in lines:
        record = json_record(line)
        assert JSON_TIME.match(record["time"]), record
        assert record["level"] in LEVELS, record
        assert record["logger"].startswith("sidecar"), record
        assert isinstance(record["message"], str) and record["message"], record
        records.append(record)
    assert len(records) >= 4

    (startup,) = [r for r in records if r["message"].startswith("ready: ")]
    assert_startup_line_says_everything(startup["message"], data_dir)
    # The same facts as fields, for queries.
    assert startup["version"] == __version__
    assert startup["data_dir"] == str(data_dir)
    assert startup["strategy"] == "minimal"
    assert startup["validators"] == 3
    assert isinstance(startup["recovery_seconds"], float) and startup["recovery_seconds"] >= 0

    # The reason as sidecar.vocabulary spells it: the same word as the metric label and the docs.
    expected = {BLOCK_KEY: ("double_proposal", "block"), VOTE_A: ("double_vote", "attestation")}
    expected[VOTE_B] = expected[VOTE_A]
    for key, (reason, kind) in expected.items():
        mentions = [r for r in records if key.hex() in json.dumps(r)]
        assert len(mentions) == 1, mentions
        (refusal,) = mentions
        assert (refusal["logger"], refusal["level"]) == ("sidecar.refusals", "warning"), refusal
        assert refusal["pubkey"] == "0x" + key.hex()
        assert refusal["reason"] == reason
        assert refusal["kind"] == kind


def test_json_format_fatal_start_error_is_json(data_dir: Path) -> None:
    command = serve_command(
        *SERVE_OPTIONS, "--log-format", "json", "--genesis-validators-root", "0x" + "11" * 32, data_dir=data_dir
    )
    server = ServerProcess.launch(command, data_dir.parent / "serve.log")
    try:
        assert server.wait_exit(30) != 0
    finally:
        server.ensure_dead()
    assert any("was created for genesis validators root" in line for line in server.lines), server.lines
    for line in server.lines:
        json_record(line)


def test_json_format_stays_json_when_a_client_fails_the_tls_handshake(data_dir: Path, certs: Certificates) -> None:
    command = serve_command(
        *SERVE_OPTIONS,
        "--log-format",
        "json",
        "--tls-cert",
        str(certs.path("server.crt")),
        "--tls-key",
        str(certs.path("server.key")),
        data_dir=data_dir,
    )
    server = ServerProcess.launch(command, data_dir.parent / "serve.log")
    try:
        server.wait_serving()
        with insecure_client(server.address) as plaintext, pytest.raises(grpc.RpcError):
            plaintext.health_status(timeout=5)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.ensure_dead()
    for line in server.lines:
        json_record(line)
