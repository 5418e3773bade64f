"""What the sync and asyncio clients share: their options, and the decisions a call makes about its failures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import grpc

from sidecar.client._errors import SidecarClientError, error_from_rpc, status_code
from sidecar.client._transport import Deadline, RetryPolicy, Timeouts, TlsOptions, channel_options
from sidecar.client._values import MAX_BATCH_SIZE, check_batch_size, root_bytes
from slashing_protection.v1 import interchange_pb2

IMPORT_CHUNK_BYTES = 1024 * 1024


class ClientBase:
    """Options common to both flavours (see `SidecarClient` for their meaning); `_connect` opens the channel."""

    def __init__(
        self,
        target: str,
        *,
        genesis_validators_root: bytes | None = None,
        tls: TlsOptions | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = MAX_BATCH_SIZE,
        channel_options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self.target = target
        self.genesis_validators_root = (
            None if genesis_validators_root is None else root_bytes(target, genesis_validators_root)
        )
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.batch_size = check_batch_size(batch_size)
        self._credentials = tls.credentials() if tls is not None else None
        self._channel_options = _channel_options(tuple(channel_options), tls)
        self._connect()

    def _connect(self) -> None:
        raise NotImplementedError

    def _deadline(self, timeout: float | None, default: float | None) -> Deadline:
        return Deadline(default if timeout is None else timeout)

    def _retry_pause(self, error: grpc.RpcError, attempt: int, deadline: Deadline) -> float | None:
        """The pause before the next attempt, or None when this failure is final: only UNAVAILABLE is retried
        (retrying a check-and-record is safe: the same message again comes back as a repeat), at most
        `retry.attempts` calls in all, and never into the deadline."""
        if status_code(error) is not grpc.StatusCode.UNAVAILABLE or attempt >= self.retry.attempts:
            return None
        pause = self.retry.pause(attempt)
        return pause if deadline.allows_pause(pause) else None

    def _error(self, error: grpc.RpcError, attempts: int) -> SidecarClientError:
        return error_from_rpc(self.target, error, f" (after {attempts} attempts)" if attempts > 1 else "")


def _channel_options(
    extra: tuple[tuple[str, int | str], ...], tls: TlsOptions | None
) -> list[tuple[str, int | str]]:
    return channel_options(extra, None if tls is None else tls.server_name)


class ChunkReader:
    """An import's request stream over a document. gRPC reads it on a thread of its own and turns an exception
    there into a bare CANCELLED; the reader keeps the exception so the call can raise it instead."""

    def __init__(self, source: bytes | BinaryIO, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._source = source
        self._chunk_size = chunk_size
        self.error: BaseException | None = None

    def chunks(self) -> Iterator[bytes]:
        if isinstance(self._source, bytes):
            view = memoryview(self._source)
            for start in range(0, len(view), self._chunk_size):
                yield bytes(view[start : start + self._chunk_size])
            return
        while chunk := self._source.read(self._chunk_size):
            yield chunk

    def requests(self) -> Iterator[interchange_pb2.ImportInterchangeRequest]:
        try:
            for chunk in self.chunks():
                yield interchange_pb2.ImportInterchangeRequest(chunk=chunk)
        except Exception as error:
            self.error = error
            raise

    def raise_read_error(self) -> None:
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def output_file(destination: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    if not isinstance(destination, str | os.PathLike):
        yield destination
        return
    target = Path(destination)
    temporary = target.with_name(f".{target.name}.partial")
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
