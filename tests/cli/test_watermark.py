"""`watermark set|show|remove` through `--server`, `--data-dir` and `--database-url`: one line each, the exit
codes every command has, what signers are answered meanwhile, and the refusals (bad values, a served directory,
bad usage)."""

from __future__ import annotations

from pathlib import Path

from slashing_protection.v1 import signing_pb2
from tests.cli.conftest import ALLOWED, ServeFactory, Signer, assert_fails, run_ok
from tests.support.keys import pubkey_hex
from tests.support.postgres_fixtures import postgres_database, postgres_server, postgres_url  # noqa: F401
from tests.support.processes import run_cli

KEY = pubkey_hex(0x55)
BEYOND = signing_pb2.REASON_AT_OR_BEYOND_HIGH_WATERMARK
NONE_SET = "no high watermark is set\n"
AT_3200 = (
    "high watermark at slot 3200, epoch 100: no block at slot 3200 or later and no attestation with a source or "
    "target epoch of 100 or later is signed\n"
)
REMOVED = "removed the high watermark: signing is no longer stopped at one\n"


def test_set_show_and_remove_through_the_server(serve: ServeFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sidecar = serve(data_dir, "--network", "mainnet")
    target = ("--server", sidecar.address)
    run_ok("register", *target, "--pubkey", KEY)
    assert run_ok("watermark", "show", *target).stdout == NONE_SET
    # --slot defaults to the first slot of the epoch on mainnet (32 slots per epoch).
    assert run_ok("watermark", "set", "--epoch", "100", *target).stdout == "set the " + AT_3200
    assert run_ok("watermark", "show", *target).stdout == AT_3200
    signer = Signer(sidecar.address)
    try:
        assert signer.block(KEY, 3199).verdict == ALLOWED
        assert signer.block(KEY, 3200).reason == BEYOND
        assert signer.attestation(KEY, 98, 99).verdict == ALLOWED
        assert signer.attestation(KEY, 99, 100).reason == BEYOND

        for arguments, detail in [
            (("--epoch", "100", "--slot", "5"), "slot 5 is below its epoch 100"),
            (("--epoch", str(2**58)), f"--epoch {2**58}: its first slot, {2**63}, is not below 2^63"),
            (("--epoch", str(2**63), "--slot", str(2**63)), f"slot {2**63} is out of range"),
            (("--epoch", str(2**63), "--slot", str(2**63 - 1)), f"epoch {2**63} is out of range"),
            (("--epoch", "1", "--slot", str(2**64 - 1)), f"slot {2**64 - 1} is out of range"),
        ]:
            line = assert_fails(run_cli("watermark", "set", *arguments, *target), 1)
            assert detail in line, line
        assert run_ok("watermark", "show", *target).stdout == AT_3200

        # Gnosis has 16 slots per epoch: the operator names the slot.
        set_line = run_ok("watermark", "set", "--epoch", "100", "--slot", "1600", *target).stdout
        assert set_line.startswith("set the high watermark at slot 1600, epoch 100: ")
        assert signer.block(KEY, 1600).reason == BEYOND

        # Offline on the served directory: refused, naming the holder, and nothing changes.
        line = assert_fails(run_cli("watermark", "remove", "--data-dir", data_dir), 1)
        assert str(sidecar.process.pid) in line and "unexpected" not in line, line
        assert run_ok("watermark", "show", *target).stdout.startswith("high watermark at slot 1600, epoch 100:")

        assert run_ok("watermark", "remove", *target).stdout == REMOVED
        assert run_ok("watermark", "show", *target).stdout == NONE_SET
        assert signer.block(KEY, 3200).verdict == ALLOWED
        assert signer.attestation(KEY, 99, 100).verdict == ALLOWED
    finally:
        signer.close()


def test_set_offline_then_served_then_removed_offline(serve: ServeFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_ok("register", "--data-dir", data_dir, "--network", "mainnet", "--pubkey", KEY)
    assert run_ok("watermark", "set", "--epoch", "100", "--data-dir", data_dir).stdout == "set the " + AT_3200
    assert run_ok("watermark", "show", "--data-dir", data_dir).stdout == AT_3200

    sidecar = serve(data_dir)
    # Every start says a watermark is set, and how to lift it.
    assert "high watermark at slot 3200, epoch 100" in sidecar.stderr
    assert "`slashing-sidecar watermark remove` lifts it" in sidecar.stderr
    assert run_ok("watermark", "show", "--server", sidecar.address).stdout == AT_3200
    signer = Signer(sidecar.address)
    try:
        assert signer.block(KEY, 3200).reason == BEYOND
    finally:
        signer.close()
    assert sidecar.stop() == 0

    assert run_ok("watermark", "remove", "--data-dir", data_dir).stdout == REMOVED
    assert run_ok("watermark", "show", "--data-dir", data_dir).stdout == NONE_SET
    verified = run_ok("verify", "--data-dir", data_dir)
    assert "DAMAGE" not in verified.stdout


def test_set_show_and_remove_on_a_shared_database(serve: ServeFactory, postgres_url: str) -> None:  # noqa: F811
    target = ("--database-url", postgres_url)
    run_ok("register", *target, "--network", "mainnet", "--pubkey", KEY)
    assert run_ok("watermark", "show", *target).stdout == NONE_SET
    assert run_ok("watermark", "set", "--epoch", "100", *target).stdout == "set the " + AT_3200
    line = assert_fails(run_cli("watermark", "set", "--epoch", "100", "--slot", "99", *target), 1)
    assert "slot 99 is below its epoch 100" in line, line
    sidecar = serve(None, *target)
    signer = Signer(sidecar.address)
    try:
        assert signer.block(KEY, 3200).reason == BEYOND
        # Safe while replicas serve: the next decision sees the removal.
        assert run_ok("watermark", "remove", *target).stdout == REMOVED
        assert signer.block(KEY, 3200).verdict == ALLOWED
        assert run_ok("watermark", "set", "--epoch", "100", *target).stdout == "set the " + AT_3200
        assert signer.block(KEY, 3201).reason == BEYOND
        assert run_ok("watermark", "show", "--server", sidecar.address).stdout == AT_3200
    finally:
        signer.close()


def test_usage_errors(tmp_path: Path) -> None:
    line = assert_fails(run_cli("watermark", "show"), 2)
    assert "give --data-dir DIR, --server HOST:PORT or --database-url URL" in line, line
    assert "--epoch" in assert_fails(run_cli("watermark", "set", "--data-dir", tmp_path), 2)
    assert_fails(run_cli("watermark", "--data-dir", tmp_path), 2)
    for negative in (("--epoch", "-1"), ("--epoch", "1", "--slot", "-32")):
        line = assert_fails(run_cli("watermark", "set", *negative, "--server", "127.0.0.1:1"), 2)
        assert "--epoch and --slot must not be negative" in line, line
    line = assert_fails(run_cli("watermark", "show", "--data-dir", tmp_path / "missing"), 2)
    assert "is not a sidecar data directory" in line, line
    assert not (tmp_path / "missing").exists()
    help_text = " ".join(run_ok("watermark", "set", "--help").stdout.split())
    assert "EPOCH * 32" in help_text and "Gnosis has 16 slots per epoch" in help_text
