"""Graceful shutdown of a real `serve` process under load: SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C).

Several client threads keep signing while the signal arrives. The process must exit 0 within the grace period;
every call must end with a decision or a "do not sign" status (never a hang); no call may be decided and then
cut off; and a restart on the same directory must know every decision that was answered ALLOWED.
"""

from __future__ import annotations

import collections
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from slashing_protection.v1 import signing_pb2
from tests.ops.support import SERVE_OPTIONS, Client, insecure_client
from tests.support.keys import pubkey, signing_root
from tests.support.processes import ServerProcess, run_cli, serve_command
from tests.support.requests import block_request
from tests.support.server import running_server

pytestmark = pytest.mark.timeout(60)

THREADS = 6
GRACE = 8.0
CALL_TIMEOUT = 10.0
# UNAVAILABLE is the contract's status for "shutting down". CANCELLED is tolerated by the main test so that it
# keeps guarding everything else; test_calls_racing_shutdown_get_unavailable pins it as a bug.
TOLERATED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
CHECKPOINT = re.compile(r"^checkpoint-(\d{20})\.ckpt$")


@dataclass
class Signer:
    """One signer: its own channel and key, a block or an attestation per call, one higher each time, until its
    first failure."""

    address: str
    index: int
    kind: str
    allowed: list[tuple[int, bytes, int]] = field(default_factory=list)  # (slot or target, root, sequence)
    failed: tuple[int, bytes] | None = None
    error: grpc.RpcError | None = None
    unexpected: signing_pb2.SigningDecision | None = None  # a fresh message must always be allowed

    @property
    def key(self) -> bytes:
        return pubkey(40_000 + self.index)

    def sign(self, client: Client, n: int, signing_root: bytes, timeout: float = CALL_TIMEOUT):
        if self.kind == "block":
            return client.block(self.key, n, signing_root, timeout=timeout)
        return client.attestation(self.key, n - 1, n, signing_root, timeout=timeout)

    def run(self) -> None:
        with insecure_client(self.address) as client:
            n = 1
            while True:  # until the server stops answering: it is going away
                message_root = signing_root(n * 100 + self.index)
                try:
                    decision = self.sign(client, n, message_root)
                except grpc.RpcError as error:
                    self.failed, self.error = (n, message_root), error
                    return
                if decision.verdict != signing_pb2.VERDICT_ALLOWED:
                    self.unexpected = decision
                    return
                self.allowed.append((n, message_root, decision.sequence))
                n += 1


def checkpoints(data_dir: Path) -> list[int]:
    directory = data_dir / "checkpoints"
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := CHECKPOINT.match(p.name)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_under_load_drains_persists_and_exits_zero(tmp_path: Path, signum: signal.Signals) -> None:
    data_dir = tmp_path / "data"
    command = serve_command(*SERVE_OPTIONS, "--shutdown-grace", str(GRACE), data_dir=data_dir)
    server = ServerProcess.launch(command, tmp_path / "serve.log")
    try:
        server.wait_serving()
        signers = [Signer(server.address, i, "block" if i % 2 else "attestation") for i in range(THREADS)]
        with insecure_client(server.address) as admin:
            admin.register(*(s.key for s in signers))
        threads = [threading.Thread(target=s.run, daemon=True) for s in signers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while min(len(s.allowed) for s in signers) < 10:
            assert time.monotonic() < deadline, "signers made no progress"
            assert all(t.is_alive() for t in threads), [(s.error, s.unexpected) for s in signers]
            time.sleep(0.02)

        signalled = time.monotonic()
        server.process.send_signal(signum)
        code = server.wait_exit(GRACE + 10)
        exited_after = time.monotonic() - signalled
        for thread in threads:
            thread.join(CALL_TIMEOUT + 5)
    finally:
        server.ensure_dead()

    assert code == 0, server.stderr
    assert exited_after < GRACE, f"exit took {exited_after:.1f} s, grace is {GRACE} s"
    assert not any(t.is_alive() for t in threads), "a call never returned"
    for s in signers:
        assert s.unexpected is None, (s.index, s.unexpected)
        assert s.error is not None, f"signer {s.index} saw no failure although the server is gone"
        assert s.error.code() in TOLERATED, (s.index, s.error)
    assert "shutting down" in server.stderr
    assert "final checkpoint written" in server.stderr
    assert "Traceback" not in server.stderr

    newest_allowed = max(seq for s in signers for _, _, seq in s.allowed)
    assert checkpoints(data_dir), "no checkpoint was written"
    assert checkpoints(data_dir)[-1] >= newest_allowed, "the final checkpoint does not cover every decision"
    if signum == signal.SIGTERM:  # once is enough: the directory left behind verifies clean
        verified = run_cli("verify", "--data-dir", str(data_dir))
        assert verified.returncode == 0, verified.stdout + verified.stderr

    with running_server(data_dir) as restarted:
        client = Client(restarted.channel)
        for s in signers:
            # Every decision answered ALLOWED is known after the restart...
            for n, message_root, _ in s.allowed:
                assert s.sign(client, n, message_root).reason == signing_pb2.REASON_ALLOWED_REPEAT, (s.index, n)
            n, _, _ = s.allowed[-1]
            assert s.sign(client, n, signing_root(1)).verdict == signing_pb2.VERDICT_REFUSED, (s.index, n)
            # ...and the call that failed was not decided behind the caller's back (in flight means finished).
            assert s.failed is not None
            n, message_root = s.failed
            assert s.sign(client, n, message_root).reason == signing_pb2.REASON_ALLOWED_NEW, (s.index, s.error)


def flood_through_sigterm(client: Client, key: bytes, server: ServerProcess) -> set[grpc.StatusCode]:
    """Keeps 32 calls outstanding; SIGTERM after 200; returns the codes of every call that failed."""
    codes: set[grpc.StatusCode] = set()
    window: collections.deque[grpc.Future] = collections.deque()
    failed = False
    for slot in range(1, 50_000):
        request = block_request(key, slot, signing_root(slot))
        window.append(client.signing.CheckAndRecordBlock.future(request, timeout=CALL_TIMEOUT))
        if slot == 200:
            server.process.send_signal(signal.SIGTERM)
        if len(window) >= 32:
            error = window.popleft().exception()
            if error is not None:
                codes.add(error.code())
                failed = True
        if failed:
            break
    for future in window:
        error = future.exception()
        if error is not None:
            codes.add(error.code())
    assert failed, "the server never stopped answering"
    return codes


def test_calls_racing_shutdown_get_unavailable(tmp_path: Path) -> None:
    """Keeps many calls outstanding on one channel while SIGTERM arrives; every failure must be UNAVAILABLE."""
    data_dir = tmp_path / "data"
    codes: set[grpc.StatusCode] = set()
    for attempt in range(3):  # the race is likely on each attempt; three make it near certain
        command = serve_command(*SERVE_OPTIONS, "--shutdown-grace", str(GRACE), data_dir=data_dir)
        server = ServerProcess.launch(command, tmp_path / f"serve-{attempt}.log")
        try:
            server.wait_serving()
            key = pubkey(41_000 + attempt)
            with insecure_client(server.address) as client:
                client.register(key)
                codes |= flood_through_sigterm(client, key, server)
            assert server.wait_exit(GRACE + 10) == 0, server.stderr
        finally:
            server.ensure_dead()
        assert codes <= {grpc.StatusCode.UNAVAILABLE}, codes
