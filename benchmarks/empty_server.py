"""The transport ceiling: our protos served by grpc.aio, every call answered ALLOWED without doing anything.

No validation, no state, no disk: what is left is the cost of gRPC and protobuf in Python on this machine, which
no real server built on the same stack can beat. ``RegisterValidators`` and ``ImportInterchange`` are accepted
and ignored so that the harness drives this server exactly as it drives the others.

Run it as ``python -m benchmarks.empty_server --listen 127.0.0.1:0``; it prints ``serving on HOST:PORT`` on
stdout when ready and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc

from benchmarks.server_runtime import serve_until_signalled
from slashing_protection.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    interchange_pb2,
    interchange_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

_ALLOWED = signing_pb2.VERDICT_ALLOWED
_NEW = signing_pb2.REASON_ALLOWED_NEW

SERVICE_NAMES = (
    signing_pb2.DESCRIPTOR.services_by_name["SlashingProtectionService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    interchange_pb2.DESCRIPTOR.services_by_name["InterchangeService"].full_name,
)


class EmptySigningServicer(signing_pb2_grpc.SlashingProtectionServiceServicer):  # type: ignore[misc,unused-ignore]
    """Allows everything. The sequence numbers count decisions, as a real log's would."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)

    def _allowed(self) -> signing_pb2.SigningDecision:
        return signing_pb2.SigningDecision(verdict=_ALLOWED, reason=_NEW, sequence=next(self._sequence))

    async def CheckAndRecordBlock(
        self, request: signing_pb2.CheckAndRecordBlockRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordBlockResponse:
        return signing_pb2.CheckAndRecordBlockResponse(decision=self._allowed())

    async def CheckAndRecordAttestation(
        self, request: signing_pb2.CheckAndRecordAttestationRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordAttestationResponse:
        return signing_pb2.CheckAndRecordAttestationResponse(decision=self._allowed())

    async def CheckAndRecordAttestations(
        self, request: signing_pb2.CheckAndRecordAttestationsRequest, context: grpc.aio.ServicerContext
    ) -> signing_pb2.CheckAndRecordAttestationsResponse:
        return signing_pb2.CheckAndRecordAttestationsResponse(
            decisions=[self._allowed() for _ in request.attestations]
        )


class EmptyAdminServicer(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc,unused-ignore]
    async def RegisterValidators(
        self, request: admin_pb2.RegisterValidatorsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RegisterValidatorsResponse:
        return admin_pb2.RegisterValidatorsResponse(registered=len(request.pubkeys))


class EmptyInterchangeServicer(interchange_pb2_grpc.InterchangeServiceServicer):  # type: ignore[misc,unused-ignore]
    async def ImportInterchange(
        self,
        request_iterator: AsyncIterator[interchange_pb2.ImportInterchangeRequest],
        context: grpc.aio.ServicerContext,
    ) -> interchange_pb2.ImportInterchangeResponse:
        async for _ in request_iterator:
            pass
        return interchange_pb2.ImportInterchangeResponse()


def register(server: grpc.aio.Server) -> list[str]:
    signing_pb2_grpc.add_SlashingProtectionServiceServicer_to_server(EmptySigningServicer(), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(EmptyAdminServicer(), server)
    interchange_pb2_grpc.add_InterchangeServiceServicer_to_server(EmptyInterchangeServicer(), server)
    return list(SERVICE_NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.empty_server", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to bind (port 0: any free port)")
    args = parser.parse_args(argv)
    asyncio.run(serve_until_signalled(args.listen, register))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
