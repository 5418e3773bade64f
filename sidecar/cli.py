"""The `slashing-sidecar` command (also `python -m sidecar`).

Every option can also be given as an environment variable `SLASHING_SIDECAR_<OPTION>` (dashes become
underscores: `--data-dir` is `SLASHING_SIDECAR_DATA_DIR`); the command line wins. Errors are one line on standard
error and a non-zero exit, never a traceback:

    0  success            1  the operation failed (refused import, damage found, not SERVING, ...)
    2  bad usage or configuration
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from sidecar import __version__
from sidecar.domain import DEFAULT_SEGMENT_BYTES, GenesisRoot
from sidecar.errors import ConfigurationError, SidecarError
from sidecar.logs import configure_logging
from sidecar.networks import NETWORKS, genesis_validators_root_for, parse_pubkey_hex, parse_root_hex
from sidecar.storage import StorageError

if TYPE_CHECKING:
    from sidecar.client import DecisionRecord, SidecarClient

__all__ = ["main"]

ENV_PREFIX = "SLASHING_SIDECAR_"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("sidecar.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as for every other usage error
        raise ConfigurationError(f"{self.prog}: {message}")


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


class _AppendOverEnvironment(argparse.Action):
    """A repeatable option whose environment default (comma-separated) the command line replaces instead of
    extending: argparse's own ``append`` would add to it, widening what the environment said."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        items.append(values)
        setattr(namespace, self.dest, items)


def _option(parser: argparse.ArgumentParser | argparse._ActionsContainer, flag: str, **kwargs: Any) -> None:
    """An option whose default comes from SLASHING_SIDECAR_<OPTION> when set."""
    name = flag.lstrip("-")
    value = _env(name)
    if kwargs.get("action") == "store_true":
        if value is not None:
            kwargs["default"] = value.strip().lower() in ("1", "true", "yes", "on")
    elif kwargs.get("action") == "append":
        kwargs["action"] = _AppendOverEnvironment
        if value is not None:
            kwargs["default"] = value.split(",")
    elif value is not None:
        kwargs["default"] = value
        kwargs["required"] = False
    kwargs.setdefault("help", "")
    kwargs["help"] += f" [env {ENV_PREFIX}{name.upper().replace('-', '_')}]"
    parser.add_argument(flag, **kwargs)


def _tls_client_options(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--tls-ca", type=Path, help="CA certificate to verify the server (TLS)")
    _option(parser, "--tls-client-cert", type=Path, help="client certificate for mutual TLS")
    _option(parser, "--tls-client-key", type=Path, help="client key for mutual TLS")
    _option(parser, "--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")


def _target_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    _option(group, "--data-dir", type=Path, help="work offline on this data directory (refused while served)")
    _option(group, "--server", help="HOST:PORT of a running sidecar")
    _option(group, "--database-url", help="a shared PostgreSQL database (safe while replicas serve from it)")
    _tls_client_options(parser)


def _root_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    _option(group, "--network", choices=sorted(NETWORKS), help="a known network's genesis validators root")
    _option(group, "--genesis-validators-root", help="0x-prefixed 32-byte hex")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slashing-sidecar", description="Slashing protection for Ethereum validators.")
    parser.add_argument("--version", action="version", version=f"slashing-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the gRPC service")
    _option(serve, "--data-dir", type=Path, help="data directory (created on first start)")
    _option(
        serve,
        "--database-url",
        help="serve from a shared PostgreSQL database instead: postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME "
        "(libpq multi-host URLs too; the schema is created on first start)",
    )
    _option(
        serve,
        "--allow-unsafe-database",
        action="store_true",
        help="serve even from a database that can lose a commit (fsync or synchronous_commit off)",
    )
    _root_options(serve)
    _option(serve, "--listen", default="127.0.0.1:50051", help="gRPC HOST:PORT (default 127.0.0.1:50051)")
    _option(serve, "--strategy", choices=["complete", "minimal"], default="complete", help="import strategy")
    _option(serve, "--checkpoint-interval", type=float, default=300.0, help="seconds between checkpoints")
    _option(serve, "--checkpoint-keep", type=int, default=3, help="checkpoints kept (default 3)")
    _option(
        serve,
        "--history-window-epochs",
        type=int,
        default=None,
        help="epochs of history kept per validator behind its newest record (0 keeps everything; default 64)",
    )
    _option(
        serve,
        "--log-segment-bytes",
        type=int,
        default=DEFAULT_SEGMENT_BYTES,
        help="size at which the decision log starts a new segment (default 64 MiB)",
    )
    _option(
        serve,
        "--archive-segments",
        action="store_true",
        help="move log segments covered by checkpoints to DIR/archive instead of deleting them",
    )
    _option(serve, "--metrics-listen", help="HOST:PORT for /metrics, /healthz and /readyz (off by default)")
    _option(serve, "--tls-cert", type=Path, help="server certificate (PEM)")
    _option(serve, "--tls-key", type=Path, help="server key (PEM)")
    _option(serve, "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    _option(
        serve,
        "--tls-signer-identity",
        action="append",
        help="with mTLS: a client identity (certificate CN, DNS or URI SAN) allowed to sign (repeatable)",
    )
    _option(
        serve,
        "--tls-admin-identity",
        action="append",
        help="with mTLS: a client identity allowed to call the interchange and admin services (repeatable)",
    )
    _option(serve, "--insecure-listen", action="store_true", help="allow plaintext on a non-loopback address")
    _option(serve, "--max-concurrent-rpcs", type=int, help="calls beyond this many in flight are refused")
    _option(
        serve,
        "--shutdown-grace",
        type=float,
        default=20.0,
        help="seconds calls in flight get to finish at shutdown (default 20, fits Kubernetes' 30)",
    )
    _option(serve, "--log-format", choices=["text", "json"], default="text", help="log lines format")

    imp = commands.add_parser("import", help="import an EIP-3076 interchange file")
    imp.add_argument("file", type=Path, help="the interchange file")
    _target_options(imp)
    _root_options(imp)
    _option(
        imp,
        "--strategy",
        choices=["complete", "minimal"],
        default="complete",
        help="import strategy when working offline",
    )

    exp = commands.add_parser("export", help="write an EIP-3076 v5 interchange file")
    exp.add_argument("file", help="output file, or - for standard output")
    _target_options(exp)
    _option(exp, "--pubkey", action="append", help="export only this key (repeatable)")

    health = commands.add_parser("health", help="exit 0 iff the server reports SERVING (exec probe)")
    _option(health, "--server", required=True, help="HOST:PORT")
    _option(health, "--service", default="", help="service name to ask about (default: the whole server)")
    _tls_client_options(health)

    verify = commands.add_parser("verify", help="check every checkpoint and log record, changing nothing")
    _option(verify, "--data-dir", type=Path, required=True, help="data directory")

    repair = commands.add_parser("repair", help="recover from damage: keep what precedes it, raise lower bounds")
    _option(repair, "--data-dir", type=Path, required=True, help="data directory")
    _option(repair, "--min-slot", type=int, required=True, help="refuse blocks at or below this slot afterwards")
    _option(
        repair,
        "--min-epoch",
        type=int,
        required=True,
        help="refuse attestations with source below or target at or below this epoch afterwards",
    )

    decisions = commands.add_parser("decisions", help="print recorded decisions as JSON lines")
    _target_options(decisions)
    _option(decisions, "--pubkey", help="only this key")
    _option(decisions, "--since-sequence", type=int, default=0, help="only records after this sequence")

    summary = commands.add_parser("summary", help="print one key's counts and bounds as JSON")
    _target_options(summary)
    _option(summary, "--pubkey", required=True, help="the key")

    register = commands.add_parser("register", help="register keys so they may sign")
    _target_options(register)
    _root_options(register)
    _option(register, "--pubkey", action="append", required=True, help="a key (repeatable)")

    checkpoint = commands.add_parser("checkpoint", help="ask a running server to write a checkpoint now")
    _option(checkpoint, "--server", required=True, help="HOST:PORT")
    _tls_client_options(checkpoint)

    watermark = commands.add_parser(
        "watermark",
        help="the global high watermark: no key signs at or beyond it (set, show, remove)",
        description="The global high watermark: while one is set, no key signs a block at or beyond its slot, "
        "nor an attestation with a source or target epoch at or beyond its epoch. Stop an old cluster at epoch N "
        "with it, then start the new one at N (docs/high-availability.md).",
    )
    actions = watermark.add_subparsers(dest="action", required=True, parser_class=_Parser)
    watermark_set = actions.add_parser("set", help="set it (replacing any), durably, on every replica at once")
    _option(
        watermark_set,
        "--epoch",
        type=int,
        required=True,
        help="refuse attestations with a source or target epoch at or beyond this epoch",
    )
    _option(
        watermark_set,
        "--slot",
        type=int,
        help="refuse blocks at or beyond this slot (default: EPOCH * 32, mainnet's slots per epoch, the first "
        "slot of EPOCH; Gnosis has 16 slots per epoch: pass --slot EPOCH*16 there)",
    )
    _target_options(watermark_set)
    _target_options(actions.add_parser("show", help="print the watermark in force"))
    _target_options(actions.add_parser("remove", help="remove it: signing is no longer stopped at one"))
    return parser


# ---------------------------------------------------------------- helpers


def _root_from(args: argparse.Namespace) -> GenesisRoot | None:
    if getattr(args, "network", None):
        return genesis_validators_root_for(args.network)
    if getattr(args, "genesis_validators_root", None):
        return parse_root_hex(args.genesis_validators_root)
    return None


def _require_target(args: argparse.Namespace) -> None:
    if not args.data_dir and not args.server and not args.database_url:
        raise ConfigurationError(f"{args.command}: give --data-dir DIR, --server HOST:PORT or --database-url URL")


def _on_backend(
    args: argparse.Namespace,
    root: GenesisRoot | None,
    work: Callable[[Any], Any],
    options: Any = None,
    create: bool = False,
) -> Any:
    """Runs `work(backend)` (a coroutine function) on the protection database the command names, `--database-url`
    or `--data-dir`, opened through the factory the server uses (`sidecar.backend.open_backend`), then closes it.

    Only commands that may create a data directory pass `create`; the others refuse a directory without an identity
    file before anything is created. A data directory held by a running server is refused (its lock), and one that
    only answered questions closes without writing a checkpoint.
    """
    from sidecar.backend import DatabaseLocation, open_backend
    from sidecar.store import IDENTITY_FILE, StoreOptions

    location: Path | DatabaseLocation
    if args.database_url:
        location = DatabaseLocation(args.database_url)
    else:
        location = Path(args.data_dir)
        if not create and not (location / IDENTITY_FILE).is_file():
            raise ConfigurationError(f"{location} is not a sidecar data directory (no {IDENTITY_FILE})")

    # A one-off command checkpoints a data directory only when it changed something.
    options = replace(options or StoreOptions(), checkpoint_at_close=False)

    async def body() -> Any:
        backend = await open_backend(location, root, options)
        try:
            return await work(backend)
        finally:
            await backend.close()

    return asyncio.run(body())


def _client(args: argparse.Namespace) -> SidecarClient:
    """The client of `--server`, as the commands have always called it: one attempt (an operator sees at once
    that the server is down or not ready), `--timeout` for unary calls, no deadline for the streams."""
    from sidecar.client import NO_RETRY, SidecarClient, Timeouts, TlsOptions

    timeout = float(getattr(args, "timeout", 10.0) or 10.0)
    ca, cert, key = (getattr(args, name, None) for name in ("tls_ca", "tls_client_cert", "tls_client_key"))
    return SidecarClient(
        args.server,
        tls=TlsOptions(ca=ca, client_cert=cert, client_key=key) if ca or cert else None,
        timeouts=Timeouts(admin=timeout, health=timeout, checkpoint=max(timeout, 120.0), streams=None),
        retry=NO_RETRY,
    )


def _decision_json(record: DecisionRecord) -> dict[str, object]:
    """A decision record received over gRPC, as the same JSON the offline commands print."""
    from sidecar.audit import DecisionRecord as AuditRecord

    return AuditRecord(
        sequence=record.sequence,
        kind=record.kind,
        pubkey=record.pubkey,
        slot=record.slot,
        source_epoch=record.source_epoch,
        target_epoch=record.target_epoch,
        signing_root=record.signing_root,
        reason=record.reason,
        unix_nanos=record.recorded_at_unix_nanos,
    ).to_json()


def _decisions_from_server(
    args: argparse.Namespace, pubkey: bytes | None, since: int
) -> Iterator[dict[str, object]]:
    with _client(args) as client:
        for record in client.decisions(pubkey, since):
            yield _decision_json(record)


def _summary_from_server(args: argparse.Namespace, pubkey: bytes) -> dict[str, object]:
    """The same JSON document the offline `summary` prints."""
    from sidecar.store import SUMMARY_BOUNDS, SUMMARY_COUNTS

    with _client(args) as client:
        summary = client.summary(pubkey)
    document: dict[str, object] = {"pubkey": "0x" + pubkey.hex(), "registered": summary.registered}
    if not summary.registered:
        return document
    for name in SUMMARY_COUNTS + SUMMARY_BOUNDS:
        document[name] = getattr(summary, name)
    last = summary.last_decision
    document["last_decision"] = _decision_json(last) if last is not None else None
    return document


@contextlib.contextmanager
def _server_input(path: Path) -> Iterator[BinaryIO]:
    """The document `import --server` streams: standard input as it comes, or the file."""
    if str(path) == "-":
        yield sys.stdin.buffer
        return
    if not Path(path).is_file():
        raise ConfigurationError(f"cannot read {path}: no such file")
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        yield handle


def _strategy(name: str) -> Any:
    from sidecar.store import Strategy

    return Strategy(name)


def _identities(values: list[str] | None, option: str) -> tuple[str, ...]:
    names = tuple(value.strip() for value in values or ())
    if any(not name for name in names):
        raise ConfigurationError(f"{option} must not be empty")
    return names


def _window(value: int | None) -> int | None:
    from sidecar.domain import DEFAULT_HISTORY_WINDOW_EPOCHS

    if value is None:
        return DEFAULT_HISTORY_WINDOW_EPOCHS
    if value < 0:
        raise ConfigurationError("--history-window-epochs must be 0 (keep everything) or more")
    return value or None


class _Progress:
    """A progress line on a terminal; a log line every few seconds otherwise."""

    def __init__(self, what: str, stream: IO[str] = sys.stderr) -> None:
        self._what = what
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def __call__(self, count: int) -> None:
        now = time.monotonic()
        if self._tty:
            if now - self._last >= 0.1:
                rate = count / max(now - self._started, 1e-9)
                self._stream.write(f"\r{self._what}: {count:,} validators ({rate:,.0f}/s)")
                self._stream.flush()
                self._last = now
        elif now - self._last >= 5.0:
            log.info("%s: %d validators so far", self._what, count)
            self._last = now

    def done(self) -> None:
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()


# ---------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from sidecar.server import ServeConfig, run

    configure_logging(args.log_format)
    from sidecar.store import StoreOptions

    store = StoreOptions(
        strategy=_strategy(args.strategy),
        checkpoint_keep=int(args.checkpoint_keep),
        history_window_epochs=_window(
            None if args.history_window_epochs is None else int(args.history_window_epochs)
        ),
        archive_segments=bool(args.archive_segments),
        segment_bytes=int(args.log_segment_bytes),
    )
    if store.segment_bytes < 4096:
        raise ConfigurationError("--log-segment-bytes must be at least 4096")
    if store.checkpoint_keep < 1:
        raise ConfigurationError("--checkpoint-keep must be at least 1")
    if bool(args.data_dir) == bool(args.database_url):
        raise ConfigurationError("serve: give either --data-dir or --database-url (exactly one)")
    config = ServeConfig(
        data_dir=args.data_dir and Path(args.data_dir),
        database_url=args.database_url,
        allow_unsafe_database=bool(args.allow_unsafe_database),
        genesis_validators_root=_root_from(args),
        listen=args.listen,
        checkpoint_interval=float(args.checkpoint_interval),
        store=store,
        metrics_listen=args.metrics_listen,
        tls_cert=args.tls_cert and Path(args.tls_cert),
        tls_key=args.tls_key and Path(args.tls_key),
        tls_client_ca=args.tls_client_ca and Path(args.tls_client_ca),
        tls_signer_identities=_identities(args.tls_signer_identity, "--tls-signer-identity"),
        tls_admin_identities=_identities(args.tls_admin_identity, "--tls-admin-identity"),
        insecure_listen=bool(args.insecure_listen),
        max_concurrent_rpcs=None if args.max_concurrent_rpcs is None else int(args.max_concurrent_rpcs),
        shutdown_grace=float(args.shutdown_grace),
    )
    asyncio.run(run(config))
    return EXIT_OK


def _print_import_result(result: Any, out: IO[str]) -> int:
    from sidecar.store import ImportStatus

    for item in result.results:
        out.write(f"0x{item.pubkey.hex()} {ImportStatus(item.status).name.lower()}: {item.message}\n")
    listed_clean = f", {result.imported} imported cleanly (not listed)" if result.imported else ""
    omitted = f", {result.results_omitted} more results not listed" if result.results_omitted else ""
    out.write(f"imported {result.validators} validators{listed_clean}{omitted}\n")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    _require_target(args)
    configure_logging()
    path: Path = args.file
    if args.server:
        with _client(args) as client, _server_input(path) as document:
            report = client.import_interchange(document)
        return _print_import_result(report, sys.stdout)
    from sidecar.local import create_from_interchange
    from sidecar.store import IDENTITY_FILE, StoreOptions

    root = _root_from(args)
    options = StoreOptions(strategy=_strategy(args.strategy))
    progress = _Progress(f"importing {path}")
    with _open_input(path) as source:
        if args.database_url or (Path(args.data_dir) / IDENTITY_FILE).is_file():
            result = _on_backend(args, root, lambda backend: backend.import_interchange(source, progress), options)
        else:
            # A new data directory takes the document's root, and is created only for a document valid whole.
            result = create_from_interchange(Path(args.data_dir), source, options, root, progress)
    progress.done()
    return _print_import_result(result, sys.stdout)


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[BinaryIO]:
    if str(path) == "-":
        # Spooled so that it can be validated and then imported: in memory only while small, a temporary file
        # beyond, so that a large import's memory stays the state it builds rather than the file.
        with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1024 * 1024)
            spool.seek(0)
            yield spool  # type: ignore[misc]
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        yield handle


@contextlib.contextmanager
def _open_output(name: str) -> Iterator[BinaryIO]:
    """Standard output, or a file written under a temporary name and renamed only when complete."""
    if name == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    target = Path(name)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        handle = open(temporary, "wb")  # noqa: SIM115 (closed below)
    except OSError as error:
        raise ConfigurationError(f"cannot write {target}: {error.strerror}") from error
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def cmd_export(args: argparse.Namespace) -> int:
    _require_target(args)
    configure_logging()
    pubkeys = [parse_pubkey_hex(p) for p in args.pubkey] if args.pubkey else None
    if args.server:
        with _client(args) as client, _open_output(args.file) as out:
            client.export_interchange(out, pubkeys or ())
        count = len(pubkeys) if pubkeys else -1
    else:
        progress = _Progress(f"exporting to {args.file}")
        with _open_output(args.file) as out:
            count = _on_backend(args, None, lambda backend: backend.export_interchange(out, pubkeys, progress))
        progress.done()
    where = "standard output" if args.file == "-" else args.file
    what = "every registered validator" if count < 0 else f"{count} validators"
    print(f"exported {what} to {where}", file=sys.stderr)
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    import grpc

    from sidecar.client import SidecarClientError

    with _client(args) as client:
        try:
            status = client.health(args.service).name
        except SidecarClientError as error:
            code = error.code
            if code is None or code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            status = f"UNREACHABLE ({code.name})"
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    from sidecar.verify import verify_data_dir

    report = verify_data_dir(Path(args.data_dir))
    for line in report.lines:
        print(line)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_repair(args: argparse.Namespace) -> int:
    from sidecar.verify import repair_data_dir

    if int(args.min_slot) < 0 or int(args.min_epoch) < 0:
        raise ConfigurationError("--min-slot and --min-epoch must not be negative")
    configure_logging()
    for line in repair_data_dir(Path(args.data_dir), int(args.min_slot), int(args.min_epoch)):
        print(line)
    return EXIT_OK


def cmd_decisions(args: argparse.Namespace) -> int:
    configure_logging()
    _require_target(args)
    pubkey = parse_pubkey_hex(args.pubkey) if args.pubkey else None
    since = int(args.since_sequence)
    out = sys.stdout
    if args.server:
        records: Iterator[dict[str, object]] = _decisions_from_server(args, pubkey, since)
    elif args.database_url:

        async def collect(backend: Any) -> list[dict[str, object]]:
            return [record.to_json() async for record in backend.decisions(pubkey, since)]

        records = iter(_on_backend(args, None, collect))
    else:
        from sidecar.audit import read_decisions
        from sidecar.storage import FileOps

        if not Path(args.data_dir).is_dir():
            raise ConfigurationError(f"{args.data_dir} is not a data directory")
        records = (r.to_json() for r in read_decisions(Path(args.data_dir), FileOps(), pubkey, since))
    for document in records:
        out.write(json.dumps(document) + "\n")
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    configure_logging()
    _require_target(args)
    pubkey = parse_pubkey_hex(args.pubkey)
    if args.server:
        document = _summary_from_server(args, pubkey)
    else:
        document = _summary_json(pubkey, _on_backend(args, None, lambda backend: backend.summary(pubkey)))
    print(json.dumps(document, indent=2))
    return EXIT_OK if document["registered"] else EXIT_FAILED


def _summary_json(pubkey: bytes, summary: Any) -> dict[str, object]:
    if summary is None:
        return {"pubkey": "0x" + pubkey.hex(), "registered": False}
    from sidecar.store import SUMMARY_BOUNDS, SUMMARY_COUNTS

    document: dict[str, object] = {"pubkey": "0x" + pubkey.hex(), "registered": True}
    for name in SUMMARY_COUNTS + SUMMARY_BOUNDS:
        document[name] = getattr(summary, name)
    document["last_decision"] = summary.last_decision.to_json() if summary.last_decision else None
    return document


def cmd_register(args: argparse.Namespace) -> int:
    configure_logging()
    _require_target(args)
    pubkeys = [parse_pubkey_hex(p) for p in args.pubkey]
    if args.server:
        with _client(args) as client:
            registration = client.register(pubkeys)
        registered, already = registration.registered, registration.already_registered
    else:
        root = _root_from(args)
        registration = _on_backend(
            args, root, lambda backend: backend.register_validators(pubkeys), create=root is not None
        )
        registered, already = registration.registered, registration.already_registered
    print(f"registered {registered} validators ({already} already registered)")
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _client(args) as client:
        checkpoint = client.checkpoint()
    sequence, validators, name = checkpoint.sequence, checkpoint.validators, checkpoint.file_name
    print(f"checkpoint {name}: {validators} validators up to sequence {sequence}")
    return EXIT_OK


def cmd_watermark(args: argparse.Namespace) -> int:
    configure_logging()
    from sidecar.vocabulary import describe_high_watermark

    _require_target(args)
    action = args.action
    slot = epoch = 0
    if action == "set":
        from sidecar.backend import HIGH_WATERMARK_LIMIT
        from sidecar.domain import SLOTS_PER_EPOCH
        from sidecar.errors import InvalidRequestError

        epoch = int(args.epoch)
        slot = epoch * SLOTS_PER_EPOCH if args.slot is None else int(args.slot)
        if epoch < 0 or slot < 0:
            raise ConfigurationError("--epoch and --slot must not be negative")
        if args.slot is None and slot >= HIGH_WATERMARK_LIMIT:
            # Said here: the slot it derived is not one the operator typed.
            raise InvalidRequestError(
                f"--epoch {epoch}: its first slot, {slot}, is not below 2^63 (the largest high watermark); give "
                "a smaller --epoch, or --slot"
            )
    if args.server:
        with _client(args) as client:
            if action == "set":
                high_watermark = client.set_high_watermark(slot, epoch)
            elif action == "remove":
                client.remove_high_watermark()
                high_watermark = None
            else:
                high_watermark = client.high_watermark()
    else:

        async def work(backend: Any) -> Any:
            if action == "set":
                return await backend.set_high_watermark(slot, epoch)
            if action == "remove":
                return await backend.remove_high_watermark()
            return await backend.high_watermark()

        high_watermark = _on_backend(args, None, work)
    if action == "set":
        print(f"set the {describe_high_watermark(high_watermark)}")
    elif action == "remove":
        print("removed the high watermark: signing is no longer stopped at one")
    else:
        print(describe_high_watermark(high_watermark))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "import": cmd_import,
    "export": cmd_export,
    "health": cmd_health,
    "verify": cmd_verify,
    "repair": cmd_repair,
    "decisions": cmd_decisions,
    "summary": cmd_summary,
    "register": cmd_register,
    "checkpoint": cmd_checkpoint,
    "watermark": cmd_watermark,
}


def _fail(message: str, json_lines: bool) -> None:
    """The one line an error gets: a JSON object when the operator asked for JSON logs."""
    if json_lines:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        line = json.dumps({"time": stamp, "level": "error", "logger": "sidecar.cli", "message": message})
    else:
        line = f"slashing-sidecar: error: {message}"
    print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core logs handshake failures and the like straight to stderr, outside our formats; errors still
    # show, and everything the sidecar itself reports goes through its own logging.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    json_lines = False
    try:
        args = build_parser().parse_args(argv)
        json_lines = getattr(args, "log_format", "text") == "json"
        return COMMANDS[args.command](args)
    except ConfigurationError as error:
        _fail(str(error), json_lines)
        return EXIT_USAGE
    except (SidecarError, StorageError) as error:
        _fail(str(error), json_lines)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("slashing-sidecar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as error:  # the promise is one line, never a traceback; the type helps a bug report
        _fail(f"unexpected {type(error).__name__}: {error}", json_lines)
        return EXIT_FAILED
