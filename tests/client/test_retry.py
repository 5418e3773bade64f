"""UNAVAILABLE is retried with backoff, within the deadline; nothing else is. Real servers throughout: one that
is still recovering, one whose port is not open yet, and a scripted one that counts the calls it gets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from sidecar.client import (
    NO_RETRY,
    AsyncSidecarClient,
    Reason,
    RetryPolicy,
    SidecarClient,
    SidecarDeadlineExceededError,
    SidecarOverloadedError,
    SidecarRefusedRequestError,
    SidecarUnavailableError,
)
from tests.client.fake import Script, fake_sidecar
from tests.service.helpers import ROOT
from tests.support.keys import pubkey, signing_root
from tests.support.server import running_server

FAST = RetryPolicy(attempts=100, initial_backoff=0.02, max_backoff=0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _later(seconds: float, action: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_recovering_server_is_waited_for(tmp_path: Path) -> None:
    with running_server(tmp_path / "db", ROOT, recover=False) as server:
        with (
            SidecarClient(server.address, genesis_validators_root=ROOT, retry=NO_RETRY) as impatient,
            pytest.raises(SidecarUnavailableError, match="recovery has not finished"),
        ):
            impatient.check_block(pubkey(1), 1, signing_root(1))
        recovery = _later(0.5, lambda: server.call(server.server.recover()))
        started = time.monotonic()
        with SidecarClient(server.address, genesis_validators_root=ROOT, retry=FAST) as client:
            decision = client.check_block(pubkey(1), 2, signing_root(1), timeout=20)
        recovery.join()
    assert time.monotonic() - started >= 0.4
    assert decision.reason is Reason.VALIDATOR_NOT_REGISTERED  # decided once recovered: an answer, not an error


def test_a_server_that_is_not_listening_yet_is_waited_for(tmp_path: Path) -> None:
    port = _free_port()
    ready = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        with running_server(tmp_path / "db", ROOT, listen=f"127.0.0.1:{port}") as server:
            assert server.port == port
            ready.set()
            stop.wait(30)

    with SidecarClient(f"127.0.0.1:{port}", genesis_validators_root=ROOT, retry=FAST) as client:
        with pytest.raises(SidecarUnavailableError):
            client.check_block(pubkey(2), 1, signing_root(1), timeout=0.3)  # nothing listens yet
        _later(0.3, lambda: threading.Thread(target=serve, daemon=True).start())
        try:
            decision = client.check_block(pubkey(2), 1, signing_root(1), timeout=20)
            assert ready.is_set()
            assert decision.reason is Reason.VALIDATOR_NOT_REGISTERED
        finally:
            stop.set()


def test_retries_give_up_at_the_deadline() -> None:
    address = f"127.0.0.1:{_free_port()}"  # nothing will ever listen there
    with SidecarClient(address, genesis_validators_root=ROOT, retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(SidecarUnavailableError) as caught:
            client.check_attestation(pubkey(3), 1, 2, signing_root(1), timeout=1.0)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed <= 1.5, elapsed
    assert "attempts)" in str(caught.value), caught.value


def test_attempts_are_bounded_and_counted() -> None:
    script = Script(status=grpc.StatusCode.UNAVAILABLE)
    with fake_sidecar(script) as address:
        policy = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.02)
        with (
            SidecarClient(address, genesis_validators_root=ROOT, retry=policy) as client,
            pytest.raises(SidecarUnavailableError, match=r"scripted UNAVAILABLE \(after 4 attempts\)"),
        ):
            client.check_block(pubkey(4), 1, signing_root(1), timeout=10)
    assert script.calls == 4


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, SidecarOverloadedError),
        (grpc.StatusCode.INVALID_ARGUMENT, SidecarRefusedRequestError),
        (grpc.StatusCode.INTERNAL, Exception),
    ],
)
def test_other_statuses_are_not_retried(status: grpc.StatusCode, error: type[Exception]) -> None:
    script = Script(status=status)
    with (
        fake_sidecar(script) as address,
        SidecarClient(address, genesis_validators_root=ROOT, retry=FAST) as client,
        pytest.raises(error) as caught,
    ):
        client.check_block(pubkey(5), 1, signing_root(1))
    assert script.calls == 1
    assert f": {status.name}: " in str(caught.value)


def test_a_late_answer_is_never_used() -> None:
    from slashing_protection.v1 import signing_pb2

    allowed = signing_pb2.SigningDecision(
        verdict=signing_pb2.VERDICT_ALLOWED, reason=signing_pb2.REASON_ALLOWED_NEW, message="ok", sequence=1
    )
    script = Script(decision=allowed, delay=0.5)
    with (
        fake_sidecar(script) as address,
        SidecarClient(address, genesis_validators_root=ROOT, retry=FAST) as client,
    ):
        with pytest.raises(SidecarDeadlineExceededError):
            client.check_block(pubkey(6), 1, signing_root(1), timeout=0.2)
        assert client.check_block(pubkey(6), 1, signing_root(1), timeout=5).allowed  # in time: used
    assert script.calls == 2, "a deadline is not retried"


def test_async_client_retries_until_recovered(tmp_path: Path) -> None:
    with running_server(tmp_path / "db", ROOT, recover=False) as server:
        recovery = _later(0.5, lambda: server.call(server.server.recover()))

        async def ask() -> Reason | None:
            async with AsyncSidecarClient(server.address, genesis_validators_root=ROOT, retry=FAST) as client:
                return (await client.check_block(pubkey(7), 1, signing_root(1), timeout=20)).reason

        assert asyncio.run(ask()) is Reason.VALIDATOR_NOT_REGISTERED
        recovery.join()


def test_async_retries_give_up_at_the_deadline() -> None:
    address = f"127.0.0.1:{_free_port()}"

    async def ask() -> None:
        async with AsyncSidecarClient(address, genesis_validators_root=ROOT, retry=FAST) as client:
            await client.check_block(pubkey(8), 1, signing_root(1), timeout=0.8)

    started = time.monotonic()
    with pytest.raises(SidecarUnavailableError):
        asyncio.run(ask())
    assert time.monotonic() - started <= 1.3
