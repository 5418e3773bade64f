"""The client's errors, and the one place a `grpc.RpcError` is translated into them (`error_from_rpc`).

Every one of them means "do not sign". `str(error)` is one line naming the server and the status
(`server 127.0.0.1:50051: UNAVAILABLE: not ready: recovery has not finished`), which is what the CLI prints.
The tree is drawn in the package docstring (`sidecar.client`).
"""

from __future__ import annotations

import grpc

from sidecar.errors import SidecarError

__all__ = [
    "SidecarClientError",
    "SidecarDeadlineExceededError",
    "SidecarNotFoundError",
    "SidecarOverloadedError",
    "SidecarPermissionDeniedError",
    "SidecarProtocolError",
    "SidecarRefusedRequestError",
    "SidecarUnavailableError",
    "SidecarWrongNetworkError",
    "error_from_rpc",
]


class SidecarClientError(SidecarError):
    """A call to the sidecar did not produce an answer to use. `code` is the gRPC status (None when the client
    itself found the problem, before or after the call), `details` the server's text, `target` the server."""

    def __init__(self, target: str, code: grpc.StatusCode | None, details: str) -> None:
        self.target = target
        self.code = code
        self.details = details
        name = code.name if code is not None else "ERROR"
        super().__init__(f"server {target}: {name}: {details}")


class SidecarUnavailableError(SidecarClientError):
    """UNAVAILABLE (not ready, shutting down, the log cannot be made durable, or nothing listens), after the
    retries the policy and the deadline allowed; or CANCELLED (the server closed its port without deciding).
    Nothing was decided: asking again later is safe."""


class SidecarDeadlineExceededError(SidecarClientError):
    """No answer within the call's deadline, or an answer that arrived after it (never used)."""


class SidecarOverloadedError(SidecarClientError):
    """RESOURCE_EXHAUSTED: more calls in flight than the server's `--max-concurrent-rpcs`."""


class SidecarRefusedRequestError(SidecarClientError):
    """INVALID_ARGUMENT from the server, or a request the client refused to send (wrong byte length, a batch
    naming one pubkey twice, ...; then `code` is None): the caller has a bug."""


class SidecarWrongNetworkError(SidecarClientError):
    """FAILED_PRECONDITION: the genesis validators root is not the database's (or the interchange document's
    is not)."""


class SidecarPermissionDeniedError(SidecarClientError):
    """PERMISSION_DENIED or UNAUTHENTICATED: this client's identity may not call this service."""


class SidecarNotFoundError(SidecarClientError):
    """NOT_FOUND: a named key is not registered, or the health service asked about does not exist."""


class SidecarProtocolError(SidecarClientError):
    """Any other status (UNIMPLEMENTED, INTERNAL, UNKNOWN, ...), or a response this client cannot read as the
    contract says (a batch answered with the wrong number of decisions, an unknown enum value...)."""


_BY_CODE: dict[grpc.StatusCode, type[SidecarClientError]] = {
    grpc.StatusCode.UNAVAILABLE: SidecarUnavailableError,
    grpc.StatusCode.CANCELLED: SidecarUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: SidecarDeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: SidecarOverloadedError,
    grpc.StatusCode.INVALID_ARGUMENT: SidecarRefusedRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: SidecarWrongNetworkError,
    grpc.StatusCode.PERMISSION_DENIED: SidecarPermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: SidecarPermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: SidecarNotFoundError,
}


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = error.code() if hasattr(error, "code") else None
    return code if isinstance(code, grpc.StatusCode) else None


def error_from_rpc(target: str, error: grpc.RpcError, note: str = "") -> SidecarClientError:
    """The client error for a failed call (sync or asyncio); `note` is appended to the server's details."""
    code = status_code(error)
    details = error.details() if hasattr(error, "details") else str(error)
    details = f"{details or ''}{note}"
    kind = _BY_CODE.get(code, SidecarProtocolError) if code is not None else SidecarProtocolError
    return kind(target, code, details)
