"""The hook for the sidecar-on-PostgreSQL rows: 1, 2 and 3 sidecar replicas sharing one database, measured in the
same run and against the same PostgreSQL server as the Web3Signer peer (their baseline).

Selected with ``--targets ...,sidecar-postgres``; the harness calls :func:`measure_sidecar_on_postgres` after
every other system, with the run's PostgreSQL server (None when it could not be started). Until the sidecar
has a PostgreSQL backend, each row says "not available" with the reason, and the run carries on.

To fill it in (the sidecar's PostgreSQL work), replace the body of :func:`measure_replicas`:

- ``database_url``: an empty database of the run's server, created for these rows;
- ``start_replicas(n)``: starts ``n`` processes of ``python -m sidecar serve --database-url URL
  --genesis-validators-root ... --listen 127.0.0.1:0`` on that database, waits until each says SERVING and
  returns them (:class:`benchmarks.common.ServerProcess`; stop them with ``.stop()``), see
  :func:`replica_starter`;
- record the figures with ``results.record(key, system, Cell(...))`` for ``system`` in
  :data:`benchmarks.report.SIDECAR_POSTGRES` (index ``n - 1``), using the existing keys (``unary.*``,
  ``batch.*``, ``single.*``); their baseline is the empty server, and the issue's targets (batched decisions/s
  ≥ 5x the Web3Signer peer's; unary p50 ≤ 2x one local round trip plus one commit) want a rule in
  :mod:`benchmarks.report` beside them. The load generator (:func:`benchmarks.load.drive`) drives one address:
  spreading lanes over the replicas' addresses is part of that work.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from benchmarks.common import (
    GENESIS_VALIDATORS_ROOT_HEX,
    REPO_ROOT,
    ServerProcess,
    python_module_argv,
    subprocess_env,
)
from benchmarks.postgres_server import PostgresServer
from benchmarks.report import SIDECAR_POSTGRES, Results
from benchmarks.scenarios import LoadPlan, Settings

TARGET = "sidecar-postgres"
REPLICAS = (1, 2, 3)
FIGURES = ["unary.calls_per_s", "unary.p50", "unary.p99", "batch.decisions_per_s", "batch.p99", "single.p50"]

ReplicaStarter = Callable[[int], Awaitable[list[ServerProcess]]]


def replica_starter(database_url: str, extra_args: Sequence[str] = ()) -> ReplicaStarter:
    """``start(n)``: ``n`` sidecar replicas serving ``database_url``, each on its own loopback port."""

    async def start(count: int) -> list[ServerProcess]:
        replicas: list[ServerProcess] = []
        try:
            for index in range(count):
                argv = python_module_argv(
                    "sidecar", "serve", "--database-url", database_url,
                    "--genesis-validators-root", GENESIS_VALIDATORS_ROOT_HEX, "--listen", "127.0.0.1:0",
                    *extra_args,
                )  # fmt: skip
                replicas.append(ServerProcess(argv, name=f"sidecar replica {index + 1}"))
                await replicas[-1].start(timeout_s=60)
        except BaseException:
            for replica in replicas:
                replica.kill()
            raise
        return replicas

    return start


def sidecar_unavailable_reason() -> str | None:
    """Why the sidecar cannot serve from PostgreSQL in this checkout, or None."""
    probe = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
    if probe.returncode != 0 or "--database-url" not in probe.stdout:
        return "`python -m sidecar serve` has no --database-url option in this checkout (no PostgreSQL backend)"
    return None


async def measure_sidecar_on_postgres(
    results: Results, postgres: PostgresServer | None, settings: Settings, work: Path, plan: LoadPlan
) -> None:
    """The rows for 1, 2 and 3 replicas, or "not available" on each with the reason."""
    reason = (
        "PostgreSQL could not be started (see the notes)" if postgres is None else sidecar_unavailable_reason()
    )
    if reason is None:
        assert postgres is not None
        database_url = postgres.create_database("sidecar")
        try:
            await measure_replicas(results, database_url, replica_starter(database_url), settings, plan)
            return
        except NotImplementedError as error:
            reason = str(error)
    for system in SIDECAR_POSTGRES:
        results.not_available(FIGURES, system, reason)


async def measure_replicas(
    results: Results, database_url: str, start_replicas: ReplicaStarter, settings: Settings, plan: LoadPlan
) -> None:
    """THE HOOK: measures the hot path with ``REPLICAS`` sidecars on ``database_url``. See the module docstring."""
    raise NotImplementedError(
        "the sidecar-on-PostgreSQL rows are not written yet (benchmarks/sidecar_postgres.py)"
    )
