"""A data directory others could change is refused, by `serve` and the offline commands alike, with one line that
says how to fix it; a private one (0700, as the sidecar creates it, or 0750) is used as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.keys import pubkey_hex
from tests.support.processes import run_cli

from .conftest import MAINNET, ServeFactory, assert_fails, run_ok

NOT_ROOT = os.geteuid() != 0


def fresh_data_dir(tmp_path: Path) -> Path:
    """A directory initialised by an offline `register`, so both `serve` and offline commands accept it."""
    data_dir = tmp_path / "data"
    run_ok("register", "--data-dir", data_dir, "--network", "mainnet", "--pubkey", pubkey_hex(1))
    return data_dir


@pytest.mark.parametrize(("mode", "who"), [(0o770, "its group"), (0o702, "other users"), (0o777, "its group and")])
def test_a_directory_writable_by_others_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    data_dir = fresh_data_dir(tmp_path)
    data_dir.chmod(mode)
    commands: tuple[list[str | Path], ...] = (
        ["serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0"],
        ["register", "--data-dir", data_dir, "--pubkey", pubkey_hex(2)],
        ["export", "-", "--data-dir", data_dir],
    )
    for command in commands:
        line = assert_fails(run_cli(*command), 1)
        assert f"data directory {data_dir} is writable by {who}" in line, line
        assert f"(mode {mode:04o})" in line and f"run `chmod 700 {data_dir}`" in line, line
    # Nothing was changed: once fixed, the directory holds exactly what it held.
    data_dir.chmod(0o700)
    summary = run_cli("summary", "--data-dir", data_dir, "--pubkey", pubkey_hex(2))
    assert summary.returncode == 1 and '"registered": false' in summary.stdout


def test_a_new_directory_inside_a_shared_parent_is_created_private(tmp_path: Path, serve: ServeFactory) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o777)
    parent.chmod(0o777)
    sidecar = serve(parent / "data", "--network", "mainnet")
    assert run_cli("health", "--server", sidecar.address).returncode == 0


def test_a_group_readable_directory_is_accepted(tmp_path: Path) -> None:
    data_dir = fresh_data_dir(tmp_path)
    data_dir.chmod(0o750)
    run_ok("register", "--data-dir", data_dir, "--pubkey", pubkey_hex(3))


@pytest.mark.skipif(NOT_ROOT, reason="giving a directory to another user needs root")
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    data_dir = fresh_data_dir(tmp_path)
    os.chown(data_dir, 4242, -1)
    commands: tuple[list[str | Path], ...] = (
        ["serve", "--data-dir", data_dir, "--genesis-validators-root", MAINNET, "--listen", "127.0.0.1:0"],
        ["register", "--data-dir", data_dir, "--pubkey", pubkey_hex(2)],
    )
    for command in commands:
        line = assert_fails(run_cli(*command), 1)
        assert f"data directory {data_dir} is owned by uid 4242, not by user root (uid 0)" in line, line
        assert f"run `chown root {data_dir}`" in line, line
