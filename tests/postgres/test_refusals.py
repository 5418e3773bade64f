"""What a start on the wrong database says: one clear line on stderr and a non-zero exit, through the real
command line (`python -m sidecar serve --database-url ...`)."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresServer
from tests.support.processes import READY, ServerProcess, serve_command

MAINNET = "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95"
HOODI = "0x212f13fc4df078b6cb7db228f1c8307566dcecf900867401a92023d7ba99cb5f"
_starts = itertools.count()
Serve = Callable[..., tuple[int, str]]


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    """Runs `serve` with the given arguments; with `until_ready`, stops it with SIGTERM once its ready line is
    logged. Returns (exit status, everything it wrote)."""

    def run(*arguments: str, until_ready: bool = False) -> tuple[int, str]:
        server = ServerProcess.launch(serve_command(*arguments), tmp_path / f"serve-{next(_starts)}.log")
        try:
            if until_ready:
                server.wait_for(READY, 30)
                return server.stop(signal.SIGTERM, 30), server.stderr
            return server.wait_exit(30), server.stderr
        finally:
            server.ensure_dead()

    return run


def one_error_line(output: str) -> str:
    """The refusal: exactly one line, the last, and no traceback."""
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and output.splitlines()[-1] == errors[0], output
    assert "Traceback" not in output
    return errors[0]


def test_another_root_is_refused_with_one_line(serve: Serve, postgres_url: str) -> None:
    code, output = serve("--database-url", postgres_url, "--network", "mainnet", until_ready=True)
    assert code == 0, output
    code, output = serve("--database-url", postgres_url, "--network", "hoodi")
    assert code == 1
    assert f"was created for genesis validators root {MAINNET}, not {HOODI}" in one_error_line(output)


def test_a_newer_schema_and_an_empty_database_without_root_are_refused(serve: Serve, postgres_url: str) -> None:
    code, output = serve("--database-url", postgres_url)
    assert code == 1
    assert "holds no slashing protection yet: give --network or --genesis-validators-root" in one_error_line(
        output
    )
    assert serve("--database-url", postgres_url, "--network", "mainnet", until_ready=True)[0] == 0
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE sidecar_meta SET schema_version = 99")
    code, output = serve("--database-url", postgres_url)
    assert code == 1
    assert "has schema version 99, newer than this sidecar's (2): upgrade the sidecar" in one_error_line(output)


def test_a_database_that_can_lose_a_commit_is_refused_unless_allowed(
    serve: Serve, postgres_server: PostgresServer, postgres_database: str, postgres_url: str
) -> None:
    # synchronous_commit can be set per database; fsync only server-wide (DatabaseDurability judges both alike).
    postgres_server.set_setting("synchronous_commit", "off", dbname=postgres_database)
    code, output = serve("--database-url", postgres_url, "--network", "mainnet")
    assert code == 1
    assert "which can lose a commit: synchronous_commit is off" in one_error_line(output)
    assert "--allow-unsafe-database" in output
    code, output = serve(
        "--database-url", postgres_url, "--network", "mainnet", "--allow-unsafe-database", until_ready=True
    )
    assert code == 0, output
    assert "serving on a database that can lose a commit (--allow-unsafe-database)" in output
    assert "a commit does NOT survive the loss of the primary" in output


def test_data_dir_and_database_url_together_are_a_usage_error(
    serve: Serve, postgres_url: str, tmp_path: Path
) -> None:
    code, output = serve("--database-url", postgres_url, "--data-dir", str(tmp_path), "--network", "mainnet")
    assert code == 2
    assert "give either --data-dir or --database-url (exactly one)" in one_error_line(output)
