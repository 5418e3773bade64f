"""Streaming RPCs under stress: many imports at once, an export the client abandons, an import the client
abandons. The server must stay answerable and shut down cleanly, and leave nothing behind."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from slashing_protection.v1 import admin_pb2, interchange_pb2
from tests.service.helpers import ROOT, Entry, import_document, interchange_document, register, summary
from tests.support.keys import pubkey, signing_root
from tests.support.server import running_server

A = signing_root(0xA)
# asyncio's default executor is a ThreadPoolExecutor of its default size.
DEFAULT_EXECUTOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)


def test_concurrent_imports_complete(tmp_path: Path) -> None:
    count = DEFAULT_EXECUTOR_WORKERS + 2
    documents = [interchange_document([Entry(pubkey(i), blocks=((1, A),))]) for i in range(count)]
    release = threading.Event()

    def slow_client(document: bytes) -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        yield interchange_pb2.ImportInterchangeRequest(chunk=document[:10])
        release.wait(10)  # a client on a slow link: the rest arrives a little later
        yield interchange_pb2.ImportInterchangeRequest(chunk=document[10:])

    with running_server(tmp_path / "db", ROOT) as server:
        try:
            futures = [server.interchange.ImportInterchange.future(slow_client(d)) for d in documents]
            time.sleep(0.5)
            release.set()
            responses = [future.result(timeout=3) for future in futures]
            assert [r.validators for r in responses] == [1] * count
            assert server.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest(), timeout=3).validators == count
        finally:
            release.set()


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    # The loop's default-executor workers are pooled by design and may outlive a call.
    return [t for t in threading.enumerate() if t not in before and not t.name.startswith("asyncio")]


def test_cancelled_export_leaves_no_thread_behind(tmp_path: Path) -> None:
    keys = [pubkey(i) for i in range(30_000)]  # ~5 MB of export: more than the server buffers for one call
    with running_server(tmp_path / "db", ROOT) as server:
        register(server, *keys)
        before = set(threading.enumerate())
        for _ in range(2):
            stream = server.interchange.ExportInterchange(interchange_pb2.ExportInterchangeRequest())
            assert next(stream).chunk
            stream.cancel()
        deadline = time.monotonic() + 2
        while _new_threads(before) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _new_threads(before) == []


def test_export_after_cancelled_exports_is_whole(tmp_path: Path) -> None:
    entries = [Entry(pubkey(i), attestations=tuple((e, e + 1, A) for e in range(50))) for i in range(200)]
    with running_server(tmp_path / "db", ROOT) as server:
        import_document(server, interchange_document(entries), chunk_size=1024 * 1024)
        whole = b"".join(
            r.chunk for r in server.interchange.ExportInterchange(interchange_pb2.ExportInterchangeRequest())
        )
        stream = server.interchange.ExportInterchange(interchange_pb2.ExportInterchangeRequest())
        next(stream)
        stream.cancel()
        again = b"".join(
            r.chunk for r in server.interchange.ExportInterchange(interchange_pb2.ExportInterchangeRequest())
        )
        assert again == whole
        assert summary(server, pubkey(0)).attestation_count == 50


def test_abandoned_import_logs_no_unretrieved_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    document = interchange_document([Entry(pubkey(1), blocks=((1, A),))])

    def abandoning() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        yield interchange_pb2.ImportInterchangeRequest(chunk=document[:20])
        raise ConnectionError("client gives up")

    caplog.set_level(logging.ERROR, logger="asyncio")
    with running_server(tmp_path / "db", ROOT) as server:
        with pytest.raises(grpc.RpcError):
            server.interchange.ImportInterchange(abandoning())
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not _unretrieved(caplog):
            gc.collect()
            time.sleep(0.05)
        assert summary(server, pubkey(1)).registered is False
    assert not _unretrieved(caplog), [r.getMessage() for r in caplog.records]


def _unretrieved(caplog: pytest.LogCaptureFixture) -> bool:
    return any("never retrieved" in record.getMessage() for record in caplog.records)
