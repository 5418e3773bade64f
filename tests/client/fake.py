"""A real gRPC server that answers the signing RPCs with whatever a test tells it to: decisions the real sidecar
never sends (to show the client fails closed), error statuses, slow answers. Not a mock: the client under test
talks to it over a real channel, exactly as to a sidecar."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from slashing_protection.v1 import signing_pb2, signing_pb2_grpc


@dataclass
class Script:
    """What the fake answers: `status` (non-OK: abort with it), or `decision` after `delay` seconds; a batch
    gets `batch_decisions` (default: `decision` once per item)."""

    decision: signing_pb2.SigningDecision | None = None
    status: grpc.StatusCode | None = None
    delay: float = 0.0
    batch_decisions: list[signing_pb2.SigningDecision] | None = None
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, context: grpc.ServicerContext, make: Callable[[], Any]) -> Any:
        with self.lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.status is not None:
            context.abort(self.status, f"scripted {self.status.name}")
        return make()


class _Servicer(signing_pb2_grpc.SlashingProtectionServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def CheckAndRecordBlock(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.script.answer(
            context, lambda: signing_pb2.CheckAndRecordBlockResponse(decision=self.script.decision)
        )

    def CheckAndRecordAttestation(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.script.answer(
            context, lambda: signing_pb2.CheckAndRecordAttestationResponse(decision=self.script.decision)
        )

    def CheckAndRecordAttestations(self, request: Any, context: grpc.ServicerContext) -> Any:
        def make() -> signing_pb2.CheckAndRecordAttestationsResponse:
            decisions = self.script.batch_decisions
            if decisions is None:
                decisions = [self.script.decision or signing_pb2.SigningDecision()] * len(request.attestations)
            return signing_pb2.CheckAndRecordAttestationsResponse(decisions=decisions)

        return self.script.answer(context, make)


@contextlib.contextmanager
def fake_sidecar(script: Script) -> Iterator[str]:
    """Serves `script` on 127.0.0.1:<free port>; yields the address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    signing_pb2_grpc.add_SlashingProtectionServiceServicer_to_server(_Servicer(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0).wait(5)
