"""Usage errors: exit 2, one line on stderr, no traceback, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import MAINNET, assert_fails
from tests.support.keys import pubkey_hex
from tests.support.processes import run_cli

DIR = "{dir}"

USAGE_ERRORS = {
    "unknown-command": (["frobnicate"], "frobnicate"),
    "serve-without-data-dir": (["serve", "--network", "mainnet"], "--data-dir"),
    "health-without-server": (["health"], "--server"),
    "repair-without-min-epoch": (["repair", "--data-dir", DIR, "--min-slot", "5"], "--min-epoch"),
    "export-without-target": (["export", "-"], "--data-dir"),
    "summary-pubkey-not-hex": (["summary", "--data-dir", DIR, "--pubkey", "0x" + "zz" * 48], "pubkey"),
    "register-pubkey-wrong-length": (
        ["register", "--data-dir", DIR, "--network", "mainnet", "--pubkey", "0x1234"],
        "pubkey",
    ),
    "root-not-hex": (["serve", "--data-dir", DIR, "--genesis-validators-root", "0x" + "g1" * 32], "root"),
    "network-and-root": (
        ["serve", "--data-dir", DIR, "--network", "mainnet", "--genesis-validators-root", MAINNET],
        "--network",
    ),
}


@pytest.mark.parametrize(("argv", "mentions"), list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS))
def test_usage_error_is_exit_2_and_one_line(tmp_path: Path, argv: list[str], mentions: str) -> None:
    data_dir = tmp_path / "data"
    result = run_cli(*(str(data_dir) if arg == DIR else arg for arg in argv))
    line = assert_fails(result, 2)
    assert mentions in line, line
    assert not data_dir.exists(), "a usage error created the data directory"


def test_negative_repair_bound_is_a_usage_error(tmp_path: Path) -> None:
    run_cli("register", "--data-dir", tmp_path, "--network", "mainnet", "--pubkey", pubkey_hex(1))
    result = run_cli("repair", "--data-dir", tmp_path, "--min-slot", "-1", "--min-epoch", "0")
    assert_fails(result, 2)
