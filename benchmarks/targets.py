"""The systems under test, behind one interface: how to start each, pre-fill its history, import and export.

- ``empty``: :mod:`benchmarks.empty_server`, the transport ceiling;
- ``durable-empty``: :mod:`benchmarks.durable_empty_server`, the same plus a durable record per decision: what
  durability itself costs (hot path only);
- ``sqlite-peer``: :mod:`benchmarks.sqlite_peer`, the peers' design;
- ``web3signer``: :mod:`benchmarks.web3signer_peer`, Web3Signer's design on the run's PostgreSQL server
  (:mod:`benchmarks.postgres_server`): the hot path without history or restart figures, and the import;
- ``sidecar``: ``python -m sidecar``, the system under test, driven only through its public contract
  (``/work/shared/CONTRACT.md``). It is "not available" (and the harness carries on) when ``import
  sidecar.server`` fails, when its process exits, or when a command it needs is missing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from benchmarks import postgres_server, sqlite_peer
from benchmarks.common import (
    GENESIS_VALIDATORS_ROOT,
    GENESIS_VALIDATORS_ROOT_HEX,
    REPO_ROOT,
    ServerProcess,
    open_channel,
    pubkeys,
    python_module_argv,
    subprocess_env,
)
from benchmarks.interchange_docs import HistorySet, history_document
from benchmarks.load import PidSource
from benchmarks.report import DURABLE_EMPTY, EMPTY, PEER, SIDECAR, WEB3SIGNER
from slashing_protection.v1 import interchange_pb2, interchange_pb2_grpc

LISTEN = "127.0.0.1:0"  # benchmark traffic never leaves the loopback interface
IMPORT_CHUNK = 1024 * 1024


async def import_over_grpc(address: str, document: bytes, *, timeout_s: float) -> None:
    """Streams ``document`` to ``InterchangeService.ImportInterchange``."""

    async def chunks() -> AsyncIterator[interchange_pb2.ImportInterchangeRequest]:
        for offset in range(0, len(document), IMPORT_CHUNK):
            yield interchange_pb2.ImportInterchangeRequest(chunk=document[offset : offset + IMPORT_CHUNK])

    async with open_channel(address) as channel:
        stub = interchange_pb2_grpc.InterchangeServiceStub(channel)
        await stub.ImportInterchange(chunks(), timeout=timeout_s)


class Target:
    name = ""
    system = ""
    is_baseline = True
    seeds_offline = False  # history can be written into its data directory directly (no gRPC)
    hot_path_only = False  # no history, restart or interchange figures: they would repeat the empty server's
    interchange_only_offline = False  # hot path plus the offline import/export, no history or restart figures
    needs_postgres = False  # started only once the harness has given it a PostgreSQL server (use_postgres)
    cli_timeout_s: float | None = None  # the import/export time limit, when longer than the settings'

    def unavailable_reason(self) -> str | None:
        """Why this system cannot be measured in this checkout, or None."""
        return None

    def server(self, data_dir: Path, *, restart_scenario: bool = False) -> ServerProcess:
        return ServerProcess(self.serve_argv(data_dir, restart_scenario=restart_scenario), name=self.system)

    def serve_argv(self, data_dir: Path, *, restart_scenario: bool) -> list[str]:
        raise NotImplementedError

    async def prefill_history(
        self, address: str, data_dir: Path, sets: Sequence[HistorySet], timeout_s: float
    ) -> None:
        """Gives every validator of ``sets`` its recorded history, by an EIP-3076 import unless overridden."""
        await import_over_grpc(address, history_document(sets), timeout_s=timeout_s)

    def seed_offline(self, data_dir: Path, first_validator: int, count: int, depth: int) -> None:
        raise NotImplementedError

    def import_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        """The command that imports ``file`` into ``data_dir`` offline; None when the system has none."""
        return None

    def database_pids(self) -> PidSource | None:
        """The processes of the database server this system decides through, for the CPU table; None when it
        has none (its CPU is then the server process's alone)."""
        return None

    def export_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return None

    async def prepare_data_dir(self, data_dir: Path) -> None:
        """Whatever must exist in ``data_dir`` before an offline import."""


class EmptyTarget(Target):
    name = "empty"
    system = EMPTY

    def serve_argv(self, data_dir: Path, *, restart_scenario: bool) -> list[str]:
        return python_module_argv("benchmarks.empty_server", "--listen", LISTEN)


class DurableEmptyTarget(Target):
    name = "durable-empty"
    system = DURABLE_EMPTY
    hot_path_only = True

    def serve_argv(self, data_dir: Path, *, restart_scenario: bool) -> list[str]:
        return python_module_argv(
            "benchmarks.durable_empty_server", "--data-dir", str(data_dir), "--listen", LISTEN
        )


class SqlitePeerTarget(Target):
    name = "sqlite-peer"
    system = PEER
    seeds_offline = True

    def serve_argv(self, data_dir: Path, *, restart_scenario: bool) -> list[str]:
        return python_module_argv(
            "benchmarks.sqlite_peer", "serve", "--data-dir", str(data_dir),
            "--genesis-validators-root", GENESIS_VALIDATORS_ROOT_HEX, "--listen", LISTEN,
        )  # fmt: skip

    async def prefill_history(
        self, address: str, data_dir: Path, sets: Sequence[HistorySet], timeout_s: float
    ) -> None:
        # Lighthouse's import checks every record against all earlier ones, which is quadratic in the depth;
        # set-up writes the rows directly instead (SQLite's WAL lets it while the server holds its connection).
        for history in sets:
            await asyncio.to_thread(
                self.seed_offline, data_dir, history.first_validator, history.count, history.depth
            )

    def seed_offline(self, data_dir: Path, first_validator: int, count: int, depth: int) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        store = sqlite_peer.SqlitePeerStore(data_dir / sqlite_peer.DATABASE_FILE, GENESIS_VALIDATORS_ROOT)
        try:
            store.seed_attestation_history(pubkeys(first_validator, count), depth)
        finally:
            store.close()

    def import_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return python_module_argv("benchmarks.sqlite_peer", "import", str(file), "--data-dir", str(data_dir))

    def export_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return python_module_argv("benchmarks.sqlite_peer", "export", str(file), "--data-dir", str(data_dir))


class Web3SignerTarget(Target):
    """Web3Signer's design; each data directory gets a database of its own on the run's PostgreSQL server."""

    name = "web3signer"
    system = WEB3SIGNER
    interchange_only_offline = True
    needs_postgres = True
    cli_timeout_s = 900.0  # one transaction per validator: the 100,000-key import takes minutes

    def __init__(self) -> None:
        self.postgres: postgres_server.PostgresServer | None = None
        self._databases: dict[Path, str] = {}

    def use_postgres(self, server: postgres_server.PostgresServer | None, reason: str = "") -> None:
        self.postgres = server
        self._reason = reason

    def unavailable_reason(self) -> str | None:
        if self.postgres is None:
            return getattr(self, "_reason", "") or "no PostgreSQL server was started"
        return None

    @staticmethod
    def database_name(data_dir: Path) -> str:
        return "w3s_" + "_".join(data_dir.parts[-2:]).replace("-", "_").lower()

    def database_url(self, data_dir: Path, *, create: bool = True) -> str:
        """The URL of ``data_dir``'s database, created empty the first time (when ``create``)."""
        if self.postgres is None:
            return "postgresql://"  # only ever asked to show the command's shape
        if create and data_dir not in self._databases:
            self._databases[data_dir] = self.postgres.create_database(self.database_name(data_dir))
        return self.postgres.url(self.database_name(data_dir))

    def database_pids(self) -> PidSource | None:
        return None if self.postgres is None else self.postgres.pids

    def serve_argv(self, data_dir: Path, *, restart_scenario: bool) -> list[str]:
        return python_module_argv(
            "benchmarks.web3signer_peer", "serve", "--database-url", self.database_url(data_dir),
            "--genesis-validators-root", GENESIS_VALIDATORS_ROOT_HEX, "--listen", LISTEN,
        )  # fmt: skip

    def import_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        url = self.database_url(data_dir, create=False)
        return python_module_argv("benchmarks.web3signer_peer", "import", str(file), "--database-url", url)

    def export_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        url = self.database_url(data_dir, create=False)
        return python_module_argv("benchmarks.web3signer_peer", "export", str(file), "--database-url", url)

    async def prepare_data_dir(self, data_dir: Path) -> None:
        await asyncio.to_thread(self.database_url, data_dir)


class SidecarTarget(Target):
    name = "sidecar"
    system = SIDECAR
    is_baseline = False
    probe_module = "sidecar.server"  # the sidecar is measurable only if this imports

    def __init__(self, extra_serve_args: Sequence[str] = ()) -> None:
        self.extra_serve_args = list(extra_serve_args)

    def unavailable_reason(self) -> str | None:
        try:
            probe = subprocess.run(
                [sys.executable, "-c", f"import {self.probe_module}"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO_ROOT,
                env=subprocess_env(),
            )
        except subprocess.TimeoutExpired:
            return f"`import {self.probe_module}` took over 60 s"
        if probe.returncode != 0:
            last = [line for line in probe.stderr.splitlines() if line.strip()]
            return f"`import {self.probe_module}` failed ({last[-1] if last else f'exit {probe.returncode}'})"
        return None

    def serve_argv(self, data_dir: Path, *, restart_scenario: bool) -> list[str]:
        argv = python_module_argv(
            "sidecar", "serve", "--data-dir", str(data_dir),
            "--genesis-validators-root", GENESIS_VALIDATORS_ROOT_HEX, "--listen", LISTEN,
        )  # fmt: skip
        if restart_scenario:
            # No periodic checkpoint while the log is filled: the restart after kill -9 replays all of it.
            argv += ["--checkpoint-interval", "86400"]
        return argv + self.extra_serve_args

    def import_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return python_module_argv("sidecar", "import", str(file), "--data-dir", str(data_dir))

    def export_argv(self, file: Path, data_dir: Path) -> list[str] | None:
        return python_module_argv("sidecar", "export", str(file), "--data-dir", str(data_dir))

    async def prepare_data_dir(self, data_dir: Path) -> None:
        # The data directory (and its genesis validators root) is created by the first `serve`.
        server = self.server(data_dir)
        await server.start(timeout_s=60)
        status = server.stop()
        if status != 0:
            raise RuntimeError(f"sidecar serve exited {status} on SIGTERM: {server.last_words()}")


def make_targets(names: Sequence[str], *, sidecar_args: Sequence[str] = ()) -> list[Target]:
    known: dict[str, Target] = {
        "empty": EmptyTarget(),
        "durable-empty": DurableEmptyTarget(),
        "sqlite-peer": SqlitePeerTarget(),
        "web3signer": Web3SignerTarget(),
        "sidecar": SidecarTarget(sidecar_args),
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[name] for name in known if name in names]  # always in this order: the baselines first
