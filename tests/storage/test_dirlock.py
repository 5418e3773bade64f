"""One process per data directory: a second acquirer, here or in another process, is refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.storage import DataDirLock, DataDirLockedError

HOLD_IN_CHILD = textwrap.dedent(
    """
    import sys
    from sidecar.storage import DataDirLock, DataDirLockedError
    try:
        lock = DataDirLock.acquire(sys.argv[1])
    except DataDirLockedError as error:
        print(f"refused: {error} (holder {error.holder_pid})")
        sys.exit(3)
    print("acquired", flush=True)
    sys.stdin.readline()  # hold the lock until the parent says so
    """
)


def run_child(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HOLD_IN_CHILD, str(directory)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_acquire_creates_a_private_directory_and_records_the_pid(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "dir"
    with DataDirLock.acquire(directory) as lock:
        assert lock.held
        assert (directory.stat().st_mode & 0o777) == 0o700
        lock_file = directory / "LOCK"
        assert (lock_file.stat().st_mode & 0o777) == 0o600
        assert lock_file.read_text() == f"{os.getpid()}\n"
    assert not lock.held
    assert lock_file.exists()  # never deleted: deleting a lock file races with its next opener


def test_a_second_acquirer_in_another_process_is_refused(tmp_path: Path) -> None:
    with DataDirLock.acquire(tmp_path):
        child = run_child(tmp_path)
    assert child.returncode == 3, child.stderr
    assert f"is in use by process {os.getpid()}" in child.stdout
    assert f"holder {os.getpid()}" in child.stdout
    assert str(tmp_path) in child.stdout


def test_the_lock_is_free_again_after_release(tmp_path: Path) -> None:
    DataDirLock.acquire(tmp_path).release()
    child = run_child(tmp_path)
    assert child.returncode == 0 and "acquired" in child.stdout, child.stderr


def test_a_lock_held_by_another_process_refuses_us_with_its_pid(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline().strip() == "acquired"
            with pytest.raises(DataDirLockedError) as raised:
                DataDirLock.acquire(tmp_path)
            assert raised.value.holder_pid == child.pid
            assert f"process {child.pid}" in str(raised.value)
        finally:
            child.stdin.close()
            child.wait(timeout=60)
    # The kernel released the child's lock when it exited.
    DataDirLock.acquire(tmp_path).release()


def test_a_second_acquirer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with DataDirLock.acquire(tmp_path), pytest.raises(DataDirLockedError, match="only one sidecar"):
        DataDirLock.acquire(tmp_path)


def test_stale_pid_in_an_unlocked_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "LOCK").write_text("999999\n")  # left by a process that crashed: no flock is held
    with DataDirLock.acquire(tmp_path):
        assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"
