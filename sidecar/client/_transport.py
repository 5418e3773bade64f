"""What both flavours share about the connection: TLS material, per-kind deadlines, the retry policy and its
schedule, and the channel's options."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sidecar.client._errors import SidecarDeadlineExceededError
from sidecar.errors import ConfigurationError

__all__ = ["NO_RETRY", "Deadline", "RetryPolicy", "Timeouts", "TlsOptions"]

# A PEM given as bytes is the PEM itself; a str or a path names a file holding it.
Pem = bytes | str | os.PathLike[str]

# Responses as large as an audit record stream's messages or an export chunk; the server keeps its own under it.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {value}: {error.strerror}") from error


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS to the sidecar: `ca` verifies the server (None: the system's roots); `client_cert` and `client_key`
    (together) are this client's identity for mutual TLS. Each is PEM bytes, or a path to a PEM file (read when
    the client is created). `server_name` overrides the name checked against the server's certificate."""

    ca: Pem | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigurationError("a client certificate and its key go together (mutual TLS needs both)")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca),
            private_key=_pem(self.client_key),
            certificate_chain=_pem(self.client_cert),
        )


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The default deadline of each kind of call, in seconds; every method also takes `timeout=` for one call.
    A deadline covers the whole call, retries and every batch of a split call included. None (streams only)
    means no deadline: the CLI's import and export take as long as the file."""

    signing: float = 2.0  # check_block, check_attestation
    batch: float = 10.0  # check_attestations, all its batches together
    admin: float = 10.0  # register, summary
    checkpoint: float = 120.0
    streams: float | None = 3600.0  # import_interchange, export_interchange, decisions
    health: float = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of UNAVAILABLE (only: every other status is final), at most `attempts` calls in all, with
    jittered exponential backoff: before retry n (1, 2, ...) a pause drawn uniformly from [b/2, b] with
    b = min(initial_backoff * multiplier**(n-1), max_backoff). A retry is never started when its pause would
    reach the call's deadline; the call then fails with the last UNAVAILABLE."""

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise ValueError("RetryPolicy needs 0 <= initial_backoff <= max_backoff and multiplier >= 1")

    def pause(self, retry: int) -> float:
        ceiling = min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)
        return self.rng.uniform(ceiling / 2, ceiling)


NO_RETRY = RetryPolicy(attempts=1)


class Deadline:
    """One call's overall deadline on the monotonic clock (None: none)."""

    __slots__ = ("_at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self._at is None else self._at - time.monotonic()

    def attempt_timeout(self, target: str) -> float | None:
        """The gRPC timeout of the next attempt: what is left; raises once nothing is."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise SidecarDeadlineExceededError(
                target, grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within the {self.timeout} s deadline"
            )
        return remaining

    def allows_pause(self, pause: float) -> bool:
        remaining = self.remaining()
        return remaining is None or pause < remaining

    def check_answer_in_time(self, target: str) -> None:
        """An answer in hand after the deadline is never used: the caller may already have given up on it."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise SidecarDeadlineExceededError(
                target,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the answer arrived after the {self.timeout} s deadline: not used",
            )


def channel_options(
    extra: tuple[tuple[str, int | str], ...], server_name: str | None
) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # A sidecar is near (loopback or one hop) and comes back within seconds of a restart: reconnect at most
        # a second apart, not gRPC's default of up to two minutes, so retries find it soon after it is back.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return [*options, *extra]
