"""`import` and `export`, offline (`--data-dir`) and through a running server (`--server`)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import (
    MAINNET,
    NETWORK_ROOTS,
    ServeFactory,
    assert_eip3076_v5,
    assert_fails,
    export_bytes,
    grpc_export,
    interchange,
    run_ok,
    write_json,
)
from tests.support.keys import pubkey_hex, root_hex
from tests.support.processes import ServerProcess, run_cli

K1, K2, K3, K4 = pubkey_hex(0xA1), pubkey_hex(0xB2), pubkey_hex(0xC3), pubkey_hex(0xD4)
UNKNOWN = pubkey_hex(0xEE)

HISTORY = interchange(
    [
        (
            K1,
            [{"slot": "10", "signing_root": root_hex(1)}, {"slot": "12"}],
            [
                {"source_epoch": "1", "target_epoch": "2", "signing_root": root_hex(2)},
                {"source_epoch": "2", "target_epoch": "3"},
            ],
        ),
        (K2, [{"slot": "7", "signing_root": root_hex(3)}], []),
        (K3, [], [{"source_epoch": "0", "target_epoch": "5", "signing_root": root_hex(4)}]),
    ]
)


def keys_of(document: dict[str, Any]) -> list[str]:
    return [item["pubkey"] for item in document["data"]]


def broken_files(directory: Path) -> dict[str, Path]:
    """The ways a file can be refused whole."""
    directory.mkdir(parents=True, exist_ok=True)
    invalid = directory / "invalid.json"
    invalid.write_text('{"metadata": {"interchange_format_version": "5", ')
    wrong_version = write_json(directory / "v4.json", interchange([(K4, [{"slot": "1"}], [])], version="4"))
    # Valid metadata and a first good validator, then a schema failure: nothing may be kept.
    schema = interchange([(K4, [{"slot": "1"}], []), (K4[:-2], [], [])])
    schema_failure = write_json(directory / "schema.json", schema)
    wrong_root = write_json(
        directory / "root.json", interchange([(K4, [{"slot": "1"}], [])], root=NETWORK_ROOTS["hoodi"])
    )
    return {
        "invalid-json": invalid,
        "wrong-version": wrong_version,
        "schema-failure": schema_failure,
        "wrong-root": wrong_root,
        "missing-file": directory / "does-not-exist.json",
    }


BROKEN = ["invalid-json", "wrong-version", "schema-failure", "wrong-root", "missing-file"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("files")
    found = broken_files(directory)
    found["history"] = write_json(directory / "history.json", HISTORY)
    return found


# ---------------------------------------------------------------- offline


def test_offline_import_creates_the_dir_from_the_files_root(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    source = write_json(
        tmp_path / "sepolia.json", interchange([(K1, [{"slot": "3"}], [])], NETWORK_ROOTS["sepolia"])
    )
    result = run_ok("import", source, "--data-dir", data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and "imported" in summary[0] and "1" in summary[0], result.stdout
    exported = assert_eip3076_v5(export_bytes("--data-dir", data_dir), NETWORK_ROOTS["sepolia"])
    assert keys_of(exported) == [K1]


def test_import_prints_one_line_per_reported_validator_and_a_summary(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    data_dir = tmp_path / "data"
    first = run_ok("import", files["history"], "--data-dir", data_dir)
    assert len(first.stdout.strip().splitlines()) == 1, "a clean import lists no validator"
    # K1 as before, K2 with one more block (merged), K4 new (clean).
    k1 = HISTORY["data"][0]
    update = interchange(
        [
            (K1, k1["signed_blocks"], k1["signed_attestations"]),
            (K2, [{"slot": "7", "signing_root": root_hex(3)}, {"slot": "9"}], []),
            (K4, [{"slot": "1"}], []),
        ]
    )
    second = run_ok("import", write_json(tmp_path / "update.json", update), "--data-dir", data_dir)
    lines = second.stdout.strip().splitlines()
    summary, listed = lines[-1], lines[:-1]
    assert "3" in summary and "validators" in summary, summary
    listed_keys = [line.split()[0] for line in listed]
    assert all(key.startswith("0x") for key in listed_keys), listed
    assert len(listed_keys) == len(set(listed_keys)), listed
    assert K2 in listed_keys, f"the merged key is not reported: {listed}"
    assert K4 not in listed_keys, f"a cleanly imported key is listed: {listed}"
    exported = assert_eip3076_v5(export_bytes("--data-dir", data_dir))
    assert sorted(keys_of(exported)) == sorted([K1, K2, K3, K4])


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> tuple[Path, bytes]:
    """A data directory holding HISTORY, and its export."""
    data_dir = tmp_path_factory.mktemp("offline") / "data"
    run_ok("import", files["history"], "--data-dir", data_dir)
    return data_dir, export_bytes("--data-dir", data_dir)


@pytest.mark.parametrize("case", BROKEN)
def test_offline_import_of_a_broken_file_changes_nothing(
    offline_dir: tuple[Path, bytes], files: dict[str, Path], case: str
) -> None:
    data_dir, before = offline_dir
    line = assert_fails(run_cli("import", files[case], "--data-dir", data_dir))
    assert "unexpected" not in line, line
    assert export_bytes("--data-dir", data_dir) == before


def test_broken_file_does_not_create_a_new_dir(tmp_path: Path, files: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    assert_fails(run_cli("import", files["wrong-version"], "--data-dir", data_dir))
    assert_fails(run_cli("import", files["missing-file"], "--data-dir", data_dir))
    assert not data_dir.exists()


def test_refused_import_leaves_no_new_dir_behind(tmp_path: Path, files: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    assert_fails(run_cli("import", files["schema-failure"], "--data-dir", data_dir))
    assert not (data_dir / "IDENTITY.json").exists()


def test_invalid_json_into_a_new_dir_is_not_an_unexpected_error(tmp_path: Path, files: dict[str, Path]) -> None:
    line = assert_fails(run_cli("import", files["invalid-json"], "--data-dir", tmp_path / "data"))
    assert "unexpected" not in line, line


def test_import_from_standard_input_into_a_new_dir(tmp_path: Path, files: dict[str, Path]) -> None:
    data_dir = tmp_path / "data"
    run_ok("import", "-", "--data-dir", data_dir, stdin=files["history"].read_bytes())
    assert sorted(keys_of(assert_eip3076_v5(export_bytes("--data-dir", data_dir)))) == sorted([K1, K2, K3])


def test_round_trip_export_import_export_is_byte_identical(
    tmp_path: Path, offline_dir: tuple[Path, bytes]
) -> None:
    source_dir, exported = offline_dir
    first = tmp_path / "first.json"
    run_ok("export", first, "--data-dir", source_dir)
    assert first.read_bytes() == exported
    document = assert_eip3076_v5(exported)
    assert sorted(keys_of(document)) == sorted([K1, K2, K3])
    k1 = next(item for item in document["data"] if item["pubkey"] == K1)
    assert {b["slot"] for b in k1["signed_blocks"]} == {"10", "12"}
    assert {(a["source_epoch"], a["target_epoch"]) for a in k1["signed_attestations"]} == {("1", "2"), ("2", "3")}

    fresh = tmp_path / "fresh"
    run_ok("import", first, "--data-dir", fresh)
    second = tmp_path / "second.json"
    run_ok("export", second, "--data-dir", fresh)
    assert second.read_bytes() == first.read_bytes()


def test_export_selected_keys_to_a_file(tmp_path: Path, offline_dir: tuple[Path, bytes]) -> None:
    data_dir, _ = offline_dir
    out = tmp_path / "subset.json"
    result = run_ok("export", out, "--data-dir", data_dir, "--pubkey", K3, "--pubkey", K1)
    assert result.stdout == ""
    assert sorted(keys_of(assert_eip3076_v5(out.read_bytes()))) == sorted([K1, K3])


def test_export_of_an_unknown_key_is_an_error_and_writes_nothing(
    tmp_path: Path, offline_dir: tuple[Path, bytes]
) -> None:
    data_dir, _ = offline_dir
    out = tmp_path / "out.json"
    line = assert_fails(run_cli("export", out, "--data-dir", data_dir, "--pubkey", K1, "--pubkey", UNKNOWN))
    assert UNKNOWN[2:] in line.lower(), line
    assert list(tmp_path.iterdir()) == [], "a refused export left a file behind"


def test_export_from_a_missing_dir_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "typo"
    line = assert_fails(run_cli("export", "-", "--data-dir", data_dir))
    assert "--network" not in line, line
    assert not data_dir.exists()


# ---------------------------------------------------------------- through a server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_serve: ServeFactory, files: dict[str, Path]
) -> ServerProcess:
    """A running server, loaded with HISTORY through `import --server`."""
    data_dir = tmp_path_factory.mktemp("served") / "data"
    sidecar = module_serve(data_dir, "--network", "mainnet", "--checkpoint-interval", "3600")
    result = run_ok("import", files["history"], "--server", sidecar.address)
    last = result.stdout.strip().splitlines()[-1]
    assert "imported" in last and "3" in last, result.stdout
    return sidecar


def test_import_through_the_server_reports_merges(tmp_path: Path, server: ServerProcess) -> None:
    update = interchange([(K3, [{"slot": "40"}], [])])
    result = run_ok("import", write_json(tmp_path / "update.json", update), "--server", server.address)
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == [K3], lines
    assert "1" in lines[-1], lines


@pytest.mark.parametrize("case", BROKEN)
def test_import_of_a_broken_file_through_the_server_changes_nothing(
    server: ServerProcess, files: dict[str, Path], case: str
) -> None:
    before = grpc_export(server.address)
    assert_fails(run_cli("import", files[case], "--server", server.address))
    assert grpc_export(server.address) == before


def test_export_through_the_server(tmp_path: Path, server: ServerProcess) -> None:
    whole = run_ok("export", "-", "--server", server.address)
    document = assert_eip3076_v5(whole.stdout, MAINNET)
    assert {K1, K2, K3} <= set(keys_of(document))
    out = tmp_path / "k2.json"
    run_ok("export", out, "--server", server.address, "--pubkey", K2)
    only = assert_eip3076_v5(out.read_bytes())
    assert keys_of(only) == [K2]
    assert only["data"][0] == next(item for item in document["data"] if item["pubkey"] == K2)


def test_export_of_an_unknown_key_through_the_server(tmp_path: Path, server: ServerProcess) -> None:
    out = tmp_path / "out.json"
    line = assert_fails(run_cli("export", out, "--server", server.address, "--pubkey", UNKNOWN))
    assert UNKNOWN[2:] in line.lower(), line
    assert not out.exists()


def test_offline_import_is_refused_while_a_server_holds_the_dir(
    server: ServerProcess, files: dict[str, Path]
) -> None:
    assert server.data_dir is not None
    before = grpc_export(server.address)
    line = assert_fails(run_cli("import", files["history"], "--data-dir", server.data_dir))
    assert str(server.process.pid) in line, f"the refusal should name the holder: {line}"
    assert grpc_export(server.address) == before


def test_lock_refusal_is_not_reported_as_unexpected(server: ServerProcess, files: dict[str, Path]) -> None:
    assert server.data_dir is not None
    line = assert_fails(run_cli("import", files["history"], "--data-dir", server.data_dir))
    assert "unexpected" not in line, line


def test_import_from_standard_input_through_the_server(server: ServerProcess, tmp_path: Path) -> None:
    update = interchange([(K4, [{"slot": "2"}], [])])
    run_ok("import", "-", "--server", server.address, stdin=json.dumps(update).encode())
    assert K4 in keys_of(json.loads(grpc_export(server.address)))


def test_offline_import_of_a_complete_history_from_standard_input(tmp_path: Path) -> None:
    """A new directory from a multi-megabyte complete history piped in (spooled to a temporary file, validated
    whole, then imported): each key ends as the default window of 64 epochs, and the export carries the rest as
    bounds."""
    keys = [pubkey_hex(0x10 + i) for i in range(4)]
    votes = [
        {"source_epoch": str(t - 1), "target_epoch": str(t), "signing_root": root_hex(t % 256)}
        for t in range(1, 4001)
    ]
    document = json.dumps(interchange([(key, [{"slot": "100"}], votes) for key in keys])).encode()
    assert len(document) > 2 * 1024 * 1024  # past the in-memory spool
    data_dir = tmp_path / "db"

    result = run_ok("import", "-", "--data-dir", data_dir, stdin=document)

    assert "imported 4 validators, 4 imported cleanly" in result.stdout
    exported = assert_eip3076_v5(export_bytes("--data-dir", data_dir))
    targets = [int(a["target_epoch"]) for a in exported["data"][0]["signed_attestations"]]
    assert targets == list(range(3936, 4001))
