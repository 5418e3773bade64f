"""A throw-away PostgreSQL server for the benchmarks and their tests: Debian's binaries, a fresh cluster, loopback.

The cluster is created with ``initdb`` in a directory the caller owns and served by ``pg_ctl`` on a free port of
``127.0.0.1`` only (no Unix socket), with trust authentication for the superuser ``postgres``. Durability is
PostgreSQL's default and is stated, not assumed: ``fsync=on``, ``synchronous_commit=on``,
``full_page_writes=on``, so a committed transaction has been flushed to the WAL on disk, as a fair comparison with
the sidecar's fdatasync needs.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``pg_ctl`` run as the ``postgres``
user that the Debian package creates (``runuser -u postgres --``), and the cluster directory is chowned to it;
its parents must be traversable by that user (the work directories under the repository are).

Usage::

    server = start_postgres(work / "postgres")       # raises PostgresUnavailableError, naming what is missing
    url = server.create_database("web3signer")       # postgresql://postgres@127.0.0.1:PORT/web3signer
    ...
    server.stop()                                    # pg_ctl stop -m fast; the directory is left to the caller

``python -m benchmarks.postgres_server --dir D`` starts one and prints its URL until interrupted.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SEARCH = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/*/bin")
SUPERUSER = "postgres"
START_TIMEOUT_S = 60

# Appended to the cluster's postgresql.conf. The durability settings are the defaults, written out so that a
# reader of the report knows what was measured; the rest keeps the server to the loopback and its own directory.
CONFIGURATION = """
# --- benchmarks/postgres_server.py ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
max_connections = 200
logging_collector = off
"""


class PostgresUnavailableError(Exception):
    """PostgreSQL cannot be started here; the message names what is missing."""


def find_bin_dir() -> Path | None:
    """Debian's PostgreSQL binaries, preferring version 15; None when none is installed."""
    preferred = Path(SEARCH[0])
    if (preferred / "initdb").exists():
        return preferred
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: path.parent.name)
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why no PostgreSQL server can be started here (naming the package or user missing), or None."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries not found: install the Debian package postgresql (scripts/setup-system)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return f"running as root and there is no {SUPERUSER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed: scripts/setup installs the dev extras"
    return None


def free_port() -> int:
    """A port of 127.0.0.1 free right now (PostgreSQL binds it a moment later; a clash fails the start loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    directory: Path  # holds the cluster (data/) and its log (postgres.log)
    bin_dir: Path
    port: int
    run_as: str | None  # the user the binaries run as, when this process is root

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def version(self) -> str:
        return self.bin_dir.parent.name

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _argv(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def _run(self, program: str, *args: str, timeout_s: float = START_TIMEOUT_S) -> None:
        completed = subprocess.run(
            self._argv(program, *args), check=False, capture_output=True, text=True, timeout=timeout_s
        )
        if completed.returncode != 0:
            lines = [line for line in (completed.stderr + completed.stdout).splitlines() if line.strip()]
            tail = self.log_file.read_text(errors="replace").splitlines()[-3:] if self.log_file.exists() else []
            detail = " | ".join(lines[-3:] + tail)
            raise PostgresUnavailableError(f"{program} exited {completed.returncode}: {detail}")

    def create_database(self, name: str) -> str:
        """Creates database ``name`` (dropping one of that name first) and returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pids(self) -> list[int]:
        """The server's processes right now: the postmaster and its children (one backend per connection, the WAL
        writer, the checkpointer...); empty when it is not running. For the CPU table."""
        try:
            postmaster = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return []
        return [postmaster, *_children(postmaster)]

    def stop(self) -> None:
        """Stops the server (fast shutdown: open sessions are ended). Safe to call twice."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` right now (from ``/proc/*/stat``)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
        if int(stat_line[stat_line.rindex(")") + 2 :].split()[1]) == parent:
            children.append(int(entry.name))
    return children


def start_postgres(directory: Path, *, port: int | None = None) -> PostgresServer:
    """Creates a fresh cluster under ``directory`` (which must not hold one) and starts it; returns when it
    accepts connections. Raises :class:`PostgresUnavailableError` naming what is missing or what failed."""
    reason = unavailable_reason()
    if reason is not None:
        raise PostgresUnavailableError(reason)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    run_as = SUPERUSER if os.geteuid() == 0 else None
    directory.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(directory, bin_dir, port or free_port(), run_as)
    if run_as is not None:
        account = pwd.getpwnam(run_as)
        os.chown(directory, account.pw_uid, account.pw_gid)
        _let_traverse(directory.resolve().parent)
    server._run(
        "initdb", "-D", str(server.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-instructions"
    )
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(CONFIGURATION.format(port=server.port))
    server._run("pg_ctl", "start", "-D", str(server.data_dir), "-l", str(server.log_file), "-w", "-t", "60")
    _wait_accepting(server)
    return server


def _let_traverse(directory: Path) -> None:
    """Lets other users traverse (not list) ``directory`` and its parents that this process owns: a
    ``tempfile.mkdtemp`` directory is 0700, and the postgres user must reach its cluster through it."""
    for path in (directory, *directory.parents):
        status = path.stat()
        if status.st_uid == os.geteuid() and not status.st_mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(status.st_mode) | stat.S_IXOTH)


def _wait_accepting(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(server.url(), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                server.stop()
                raise PostgresUnavailableError(f"PostgreSQL did not accept connections: {error}") from error
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.postgres_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dir", type=Path, required=True, help="a new directory for the cluster and its log")
    args = parser.parse_args(argv)
    try:
        server = start_postgres(args.dir)
    except PostgresUnavailableError as error:
        print(f"postgres_server: {error}", file=sys.stderr)
        return 1
    print(f"serving on 127.0.0.1:{server.port} ({server.url()})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
