"""Overload: with `max_concurrent_rpcs`, calls beyond the limit get RESOURCE_EXHAUSTED ("do not sign"), and none
of them is recorded, so none can count as ALLOWED."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from slashing_protection.v1 import interchange_pb2, signing_pb2
from tests.service.helpers import (
    ROOT,
    DurableImageFileOps,
    assert_decision,
    decisions,
    register,
    rpc_error,
    settled_decisions,
    sign_block,
    summary,
)
from tests.support.keys import pubkey, signing_root
from tests.support.requests import block_request
from tests.support.server import running_server

A, B = signing_root(0xA), signing_root(0xB)
R = signing_pb2


def test_calls_beyond_the_limit_are_exhausted_while_one_is_held(tmp_path: Path) -> None:
    """An import stream held open is the one call in flight; every signing call meanwhile is refused."""
    keys = [pubkey(i) for i in range(1, 9)]
    with running_server(tmp_path / "db", ROOT, max_concurrent_rpcs=1) as server:
        register(server, *keys)
        release = threading.Event()

        def held() -> Iterator[interchange_pb2.ImportInterchangeRequest]:
            yield interchange_pb2.ImportInterchangeRequest(chunk=b"{")
            release.wait(10)

        holder = server.interchange.ImportInterchange.future(held())
        try:
            deadline = time.monotonic() + 5
            while True:  # the held call is in flight once a signing call bounces off it
                error = rpc_error(server.signing.CheckAndRecordBlock, block_request(keys[0], 1, A, ROOT))
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with ThreadPoolExecutor(max_workers=len(keys)) as pool:
                errors = list(
                    pool.map(
                        lambda key: rpc_error(server.signing.CheckAndRecordBlock, block_request(key, 1, A, ROOT)),
                        keys,
                    )
                )
            assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        finally:
            release.set()
        assert isinstance(holder.exception(timeout=10), grpc.RpcError)  # "{" alone is no document

        # Nothing of the refused calls was recorded: every key's slot 1 is still free, for any root.
        assert decisions(server) == []
        for key in keys:
            assert summary(server, key).allowed_decisions == 0
            assert_decision(sign_block(server, key, 1, B), R.REASON_ALLOWED_NEW)


def test_parallel_signers_beyond_the_limit(tmp_path: Path) -> None:
    """32 threads sign at once against a limit of 1 while every fsync takes 20 ms: some calls are exhausted, and
    exactly the calls answered OK are in the audit trail."""
    keys = [pubkey(i) for i in range(1, 33)]
    fileops = DurableImageFileOps(sync_delay=0.02)
    with running_server(tmp_path / "db", ROOT, max_concurrent_rpcs=1, fileops=fileops) as server:
        register(server, *keys)
        barrier = threading.Barrier(len(keys), timeout=10)

        def sign(key: bytes) -> tuple[bytes, grpc.StatusCode, signing_pb2.SigningDecision | None]:
            barrier.wait()
            try:
                return (
                    key,
                    grpc.StatusCode.OK,
                    server.signing.CheckAndRecordBlock(block_request(key, 1, A, ROOT)).decision,
                )
            except grpc.RpcError as error:
                return key, error.code(), None

        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            outcomes = list(pool.map(sign, keys))

        codes = {code for _, code, _ in outcomes}
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        exhausted = [key for key, code, _ in outcomes if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        answered = {key: decision for key, code, decision in outcomes if decision is not None}
        assert exhausted, "no call was refused for overload"
        assert answered, "no call got through"
        assert all(d.verdict == R.VERDICT_ALLOWED for d in answered.values())

        trail = settled_decisions(server, count=len(answered))
        assert {record.pubkey for record in trail} == set(answered)
        assert {record.sequence for record in trail} == {d.sequence for d in answered.values()}
        for key in exhausted:
            assert summary(server, key).allowed_decisions == 0
            assert_decision(sign_block(server, key, 1, B), R.REASON_ALLOWED_NEW)
