"""`--max-concurrent-rpcs N` on a real `serve` process: the call beyond N in flight gets RESOURCE_EXHAUSTED.

Health watches are the calls held in flight: a server stream stays open until the client cancels it, so the
number of calls in flight is exactly the number of open watches.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from slashing_protection.v1 import signing_pb2
from tests.ops.support import Client, insecure_client, pubkey, root, serving, watches

pytestmark = pytest.mark.timeout(60)

LIMIT = 3


def block_after_release(client: Client, key: bytes, slot: int) -> signing_pb2.SigningDecision:
    """The server may take a moment to see a cancelled watch end: retry while it still says RESOURCE_EXHAUSTED."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return client.block(key, slot, root(slot))
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_calls_beyond_the_maximum_get_resource_exhausted(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--max-concurrent-rpcs", str(LIMIT)) as server:
        key = pubkey(60)
        with insecure_client(server.address) as client:
            client.register(key)
            # LIMIT - 1 calls in flight: one more fits.
            with watches(server.address, LIMIT - 1):
                assert client.block(key, 1, root(1)).reason == signing_pb2.REASON_ALLOWED_NEW
            # LIMIT calls in flight: the next one is refused before it is decided...
            with watches(server.address, LIMIT):
                for call in (lambda: client.block(key, 2, root(2)), client.health_status):
                    with pytest.raises(grpc.RpcError) as caught:
                        call()
                    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
            # ...so once capacity is back, the same block is new, not a repeat: nothing was recorded.
            decision = block_after_release(client, key, 2)
            assert decision.reason == signing_pb2.REASON_ALLOWED_NEW
