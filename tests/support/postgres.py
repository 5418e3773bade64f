"""A private PostgreSQL server for tests: a real `postgres` process (Debian's package), never a mock.

`PostgresServer` runs `initdb` in a temporary directory of its own, listens on a free loopback port with its unix
socket inside that directory, and is started and stopped with `pg_ctl`. When the tests run as root it runs every
server command as the unprivileged `postgres` user that the Debian package creates (PostgreSQL refuses to run as
root), owning the temporary directory.

What the resilience tests need is here too: `stop(mode="immediate")` (the server dies without a shutdown
checkpoint, as on a crash) and `start()` again on the same port; `crash()` (SIGKILL to the postmaster and every
backend at once, as a machine crash looks to clients); `create_standby()` makes a streaming standby of this
server by `pg_basebackup` (synchronous when the primary names it in `synchronous_standby_names`), and `promote()`
turns a standby into a primary, for the failover drills (tests/postgres/test_failover.py).

The pytest fixtures are in `tests/support/postgres_fixtures.py` (a session-wide server, a database per test).
Outside CI a missing PostgreSQL skips with a message naming it; in CI (`CI` set) the tests fail instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_postgres_bin", "require_postgres"]

# The unprivileged account the Debian package creates; the server runs as it when the tests run as root.
SERVER_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60


def find_postgres_bin() -> Path | None:
    """The newest `/usr/lib/postgresql/N/bin` holding initdb and pg_ctl, else the directory of them on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    for directory in reversed(candidates):
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    return None


def require_postgres() -> Path:
    """The PostgreSQL bin directory; skips outside CI, fails in CI, when it is missing."""
    directory = find_postgres_bin()
    if directory is not None:
        return directory
    message = (
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package postgresql "
        "(scripts/setup-system does, as root)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the PostgreSQL tests")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory (see the module doc). Not started until `start`."""

    def __init__(self, bin_dir: Path, base_dir: Path | None = None, port: int | None = None) -> None:
        self.bin_dir = bin_dir
        self._owns_base = base_dir is None
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "server.log"
        self.port = port or free_port()
        self._free: list[str] = []
        self._as_root = os.geteuid() == 0
        if self._as_root:
            self.base_dir.chmod(0o755)
            self._chown(self.base_dir)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)

    # ---------------------------------------------------------------- running server commands

    def _chown(self, path: Path) -> None:
        if self._as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def run(self, program: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs one of the server's programs, as the unprivileged user when we are root."""
        command: list[str] = [str(self.bin_dir / program), *arguments]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(arguments)} failed ({completed.returncode}): "
                f"{completed.stderr.strip() or completed.stdout.strip()}\n{self.log_tail()}"
            )
        return completed

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ---------------------------------------------------------------- lifecycle

    def initdb(self, settings: dict[str, str] | None = None) -> None:
        """Creates the cluster: trust authentication on loopback and the socket (a private test server), WAL
        fit for streaming standbys, the server's durability defaults (fsync and synchronous_commit on)."""
        self.run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self.configure(
            {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.socket_dir}'",
                "max_connections": "200",
                "shared_buffers": "32MB",
                "wal_level": "replica",
                "max_wal_senders": "5",
                "hot_standby": "on",
                "logging_collector": "off",
                **(settings or {}),
            }
        )
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def configure(self, settings: dict[str, str]) -> None:
        """Appends settings to postgresql.conf (the last one wins); takes effect at the next start or reload."""
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")

    def start(self) -> None:
        self.run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(START_TIMEOUT_SECONDS),
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean shutdown) or `immediate` (no shutdown checkpoint: crash recovery at the next start)."""
        self.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def reload(self) -> None:
        self.run("pg_ctl", "-D", str(self.data_dir), "reload")

    @property
    def running(self) -> bool:
        return self.run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def destroy(self) -> None:
        self.stop("immediate")
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # ---------------------------------------------------------------- databases and SQL

    def url(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://{SUPERUSER}@{host}:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Runs one statement with psql over the unix socket; returns its unaligned output."""
        completed = self.run(
            "psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", dbname,
            "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statement,
        )  # fmt: skip
        return completed.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def acquire_database(self) -> str:
        """An empty database: a released one when there is one (emptied: far cheaper than CREATE DATABASE,
        which copies and logs the whole template), else a new one."""
        return self._free.pop() if self._free else self.create_database()

    def release_database(self, name: str) -> None:
        """Empties a database from `acquire_database` (its settings reset, its sessions ended, its schema
        dropped) for reuse."""
        self.sql(f'ALTER DATABASE "{name}" RESET ALL')
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        self.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public", dbname=name)
        self._free.append(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def set_setting(self, name: str, value: str, dbname: str | None = None) -> None:
        """Sets a setting for new sessions: of one database (ALTER DATABASE) or of the server (ALTER SYSTEM)."""
        if dbname is not None:
            self.sql(f'ALTER DATABASE "{dbname}" SET {name} = {value}')
        else:
            self.sql(f"ALTER SYSTEM SET {name} = {value}")
            self.reload()

    # ---------------------------------------------------------------- crashes and replication (failover drills)

    @property
    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from the first line of `postmaster.pid` (None when there is none)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def crash(self) -> None:
        """SIGKILL to the whole server at once, as a machine crash looks to its clients: the postmaster is
        stopped first (so it forks nothing more and restarts nothing), then it and every child process (each
        backend is its own process group, so the postmaster's group alone would leave them running) are killed.
        No backend survives to answer anyone; the sockets close; `postmaster.pid` stays behind, as after a real
        crash, and a later `start()` runs crash recovery."""
        pid = self.postmaster_pid
        assert pid is not None, f"no postmaster.pid in {self.data_dir}"
        os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not any(_alive(victim) for victim in victims), 30, what="the killed server to exit")
        # Until its parent (init, here) reaps it, the dead postmaster is a zombie that `pg_ctl status` and the next
        # `start()` take for a running server.
        wait_until(lambda: not self.running, 60, interval=0.2, what="the killed postmaster to be reaped")

    def move_to_new_port(self) -> None:
        """Listens on another free port from the next start: the old primary's disk brought up where the
        replicas, whose URL names the old port, cannot reach it (two primaries must never both serve)."""
        self.port = free_port()
        self.configure({"port": str(self.port)})

    def create_standby(self, name: str = "standby") -> PostgresServer:
        """A streaming standby of this (running) server, started. It connects as `application_name` `name`
        through a physical replication slot of the same name (so this server keeps the WAL the standby has not
        received, even while the standby is stopped). Make it synchronous afterwards with
        `set_setting("synchronous_standby_names", "'name'")` on this server; the standby's own
        `synchronous_standby_names` is empty, so once promoted it commits without waiting for anyone.

        Its settings go to `postgresql.auto.conf`, read last: a `primary_conninfo` that `pg_basebackup -R` wrote
        there (without an application name, so `walreceiver`, which no `synchronous_standby_names` names) and
        settings this server got by ALTER SYSTEM would otherwise win."""
        standby = PostgresServer(self.bin_dir)
        self.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
            "-D", str(standby.data_dir), "-R", "-X", "stream", "-C", "-S", name, "--no-sync",
        )  # fmt: skip
        with open(standby.data_dir / "postgresql.auto.conf", "a") as conf:
            for setting, value in {
                "port": str(standby.port),
                "unix_socket_directories": f"'{standby.socket_dir}'",
                "primary_conninfo": f"'host=127.0.0.1 port={self.port} user={SUPERUSER} application_name={name}'",
                "primary_slot_name": f"'{name}'",
                "synchronous_standby_names": "''",
            }.items():
                conf.write(f"{setting} = {value}\n")
        standby.start()
        return standby

    def replication_state(self, name: str = "standby") -> tuple[str, str] | None:
        """(state, sync_state) of the standby `name` as this server sees it (`streaming`, `sync`...), or None
        while it is not connected."""
        row = self.sql(f"SELECT state, sync_state FROM pg_stat_replication WHERE application_name = '{name}'")
        if not row:
            return None
        state, sync_state = row.split("|")
        return state, sync_state

    def promote(self) -> None:
        """Ends this standby's recovery: it becomes a primary (read-write) once this returns."""
        self.run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_SECONDS), "promote")
        wait_until(lambda: self.sql("SELECT pg_is_in_recovery()") == "f", START_TIMEOUT_SECONDS, what="promotion")


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The fourth field of /proc/PID/stat, after the parenthesised command name (which may hold spaces).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead but not reaped by its parent, counts as gone)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@contextlib.contextmanager
def private_server(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A started server for the duration of the block, destroyed afterwards."""
    server = PostgresServer(require_postgres())
    try:
        server.initdb(settings)
        server.start()
        yield server
    finally:
        server.destroy()


def wait_until(predicate: object, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Polls `predicate()` until true; fails naming `what` after `timeout` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def multi_host_url(servers: Sequence[PostgresServer], dbname: str) -> str:
    """A libpq multi-host URL naming every server, for the read-write one (how replicas follow a failover)."""
    hosts = ",".join(f"127.0.0.1:{server.port}" for server in servers)
    return f"postgresql://{SUPERUSER}@{hosts}/{dbname}?target_session_attrs=read-write"
