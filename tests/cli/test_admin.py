"""`register`, `decisions`, `summary` and `checkpoint` against a running server (decisions made through gRPC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import ALLOWED, ServeFactory, Signer, assert_fails, run_ok
from tests.support.keys import pubkey_hex
from tests.support.processes import ServerProcess, run_cli

K1, K2, UNREGISTERED, LATE = pubkey_hex(0x11), pubkey_hex(0x22), pubkey_hex(0x33), pubkey_hex(0x44)


@dataclass
class Made:
    """One decision made through gRPC, as `decisions` should print it."""

    sequence: int
    kind: str
    pubkey: str
    allowed: bool
    fields: dict[str, int]


@dataclass
class Served:
    sidecar: ServerProcess
    made: list[Made]

    @property
    def address(self) -> str:
        return self.sidecar.address


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, module_serve: ServeFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("admin") / "data"
    sidecar = module_serve(data_dir, "--network", "mainnet", "--checkpoint-interval", "3600")
    registered = run_ok("register", "--server", sidecar.address, "--pubkey", K1, "--pubkey", K2)
    assert "2" in registered.stdout, registered.stdout
    signer = Signer(sidecar.address)
    made: list[Made] = []

    def block(key: str, slot: int, root: bytes | None = None) -> None:
        decision = signer.block(key, slot, root)
        made.append(Made(decision.sequence, "block", key, decision.verdict == ALLOWED, {"slot": slot}))

    def vote(key: str, source: int, target: int) -> None:
        decision = signer.attestation(key, source, target)
        fields = {"source_epoch": source, "target_epoch": target}
        made.append(Made(decision.sequence, "attestation", key, decision.verdict == ALLOWED, fields))

    try:
        block(K1, 10)
        block(K1, 11)
        block(K1, 11, b"\x99" * 32)  # double proposal: refused
        vote(K1, 1, 2)
        vote(K1, 0, 3)  # surrounds (1, 2): refused
        block(K2, 5)
        block(K1, 12)  # allowed last, so every refusal before it is on disk too
    finally:
        signer.close()
    assert [m.allowed for m in made] == [True, True, False, True, False, True, True]
    assert all(m.sequence > 0 for m in made)
    yield Served(sidecar, made)


def parse_lines(stdout: str) -> list[dict[str, Any]]:
    documents = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert all(isinstance(document, dict) for document in documents)
    return documents


def matches(document: dict[str, Any], made: Made) -> bool:
    return (
        document["sequence"] == made.sequence
        and document["kind"] == made.kind
        and document["pubkey"] == made.pubkey
        and document["verdict"] == ("allowed" if made.allowed else "refused")
        and all(document.get(name) == value for name, value in made.fields.items())
    )


def assert_lists(documents: list[dict[str, Any]], expected: list[Made]) -> None:
    decisions = [d for d in documents if d["sequence"] in {m.sequence for m in expected}]
    assert len(decisions) == len(expected), documents
    for document, made in zip(decisions, expected, strict=True):
        assert matches(document, made), (document, made)


def test_decisions_through_the_server_are_json_lines_of_every_decision(served: Served) -> None:
    documents = parse_lines(run_ok("decisions", "--server", served.address).stdout)
    sequences = [d["sequence"] for d in documents]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert_lists(documents, served.made)
    refused = [d for d in documents if d["verdict"] == "refused"]
    assert {d["sequence"] for d in refused} == {m.sequence for m in served.made if not m.allowed}


def test_decisions_filtered_by_pubkey_and_sequence(served: Served) -> None:
    only_k2 = parse_lines(run_ok("decisions", "--server", served.address, "--pubkey", K2).stdout)
    assert {d["pubkey"] for d in only_k2} == {K2}
    assert_lists(only_k2, [m for m in served.made if m.pubkey == K2])

    since = served.made[3].sequence
    later = parse_lines(run_ok("decisions", "--server", served.address, "--since-sequence", str(since)).stdout)
    assert all(d["sequence"] > since for d in later), later
    assert_lists(later, [m for m in served.made if m.sequence > since])


def test_decisions_offline_read_the_same_log_while_served(served: Served) -> None:
    assert served.sidecar.data_dir is not None
    offline = parse_lines(run_ok("decisions", "--data-dir", served.sidecar.data_dir, "--pubkey", K1).stdout)
    online = parse_lines(run_ok("decisions", "--server", served.address, "--pubkey", K1).stdout)
    assert offline == online
    assert_lists(offline, [m for m in served.made if m.pubkey == K1])


def test_summary_of_a_registered_key(served: Served) -> None:
    summary = json.loads(run_ok("summary", "--server", served.address, "--pubkey", K1).stdout)
    assert summary["pubkey"] == K1
    assert summary["registered"] is True
    assert summary["block_count"] == 3
    assert (summary["lowest_slot"], summary["highest_slot"]) == (10, 12)
    assert summary["attestation_count"] == 1
    assert (summary["highest_source_epoch"], summary["highest_target_epoch"]) == (1, 2)
    assert (summary["allowed_decisions"], summary["refused_decisions"]) == (4, 2)
    assert summary["last_decision"]["sequence"] == served.made[-1].sequence


def test_summary_of_an_unregistered_key_exits_1(served: Served) -> None:
    result = run_cli("summary", "--server", served.address, "--pubkey", UNREGISTERED)
    assert result.returncode == 1
    assert json.loads(result.stdout)["registered"] is False


def test_register_makes_a_key_known(served: Served) -> None:
    before = run_cli("summary", "--server", served.address, "--pubkey", LATE)
    assert before.returncode == 1
    result = run_ok("register", "--server", served.address, "--pubkey", LATE, "--pubkey", K1)
    assert "1" in result.stdout, result.stdout
    after = json.loads(run_ok("summary", "--server", served.address, "--pubkey", LATE).stdout)
    assert after["registered"] is True


def test_checkpoint_through_the_server_writes_a_checkpoint(served: Served) -> None:
    data_dir = served.sidecar.data_dir
    assert data_dir is not None
    before = set((data_dir / "checkpoints").glob("*"))
    result = run_ok("checkpoint", "--server", served.address)
    written = set((data_dir / "checkpoints").glob("*")) - before
    assert written, "no new checkpoint file"
    assert any(path.name in result.stdout for path in written), result.stdout


def test_server_commands_fail_cleanly_when_nothing_listens(tmp_path: Path) -> None:
    line = assert_fails(run_cli("summary", "--server", "127.0.0.1:1", "--pubkey", K1, "--timeout", "3"))
    assert "127.0.0.1:1" in line, line


def test_offline_commands_that_only_read_leave_the_data_directory_as_they_found_it(tmp_path: Path) -> None:
    """Offline commands open the directory through the same factory as the server; one that changed nothing
    writes no checkpoint, one that recorded something does (so the next start replays nothing)."""
    data_dir = tmp_path / "data"
    run_ok("register", "--data-dir", data_dir, "--network", "mainnet", "--pubkey", pubkey_hex(1))

    def files() -> dict[str, bytes]:
        """Every file and its bytes, but the lock file's (it names the last process that held the directory)."""
        return {
            str(path.relative_to(data_dir)): path.read_bytes()
            for path in data_dir.rglob("*")
            if path.is_file() and path.name != "LOCK"
        }

    before = files()
    assert any(name.endswith(".ckpt") for name in before), sorted(before)
    run_ok("summary", "--data-dir", data_dir, "--pubkey", pubkey_hex(1))
    run_ok("export", tmp_path / "out.json", "--data-dir", data_dir)
    run_ok("watermark", "show", "--data-dir", data_dir)
    run_ok("decisions", "--data-dir", data_dir)
    assert files() == before
    run_ok("register", "--data-dir", data_dir, "--pubkey", pubkey_hex(2))
    after = files()
    assert {name for name in after if name.endswith(".ckpt")} - set(before), "no checkpoint after a registration"
