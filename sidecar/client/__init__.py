"""A typed client of the sidecar, for signers and operators: `SidecarClient` (blocking, over `grpc`) and
`AsyncSidecarClient` (asyncio, over `grpc.aio`), with the same methods, options and errors.

    from sidecar.client import SidecarClient

    with SidecarClient("127.0.0.1:50051", genesis_validators_root=MAINNET) as sidecar:
        decision = sidecar.check_attestation(pubkey, source_epoch, target_epoch, signing_root, timeout=1.0)
        if decision.allowed:
            ...sign...

What a call promises:

- **Decisions are values.** `check_block`, `check_attestation` and `check_attestations` return
  `SigningDecision(allowed, reason, message, sequence)`. `allowed` is True only for `VERDICT_ALLOWED` with an
  allowing reason; anything else the server sends, or anything this client does not recognise, reads as not
  allowed (fail closed). Every exception means "do not sign" too.
- **Deadlines.** Every call has one: the client's default for its kind (`Timeouts`), or `timeout=` seconds for
  that call. It covers the whole call, retries and all the batches of a split call included, and an answer in
  hand after it is discarded (`SidecarDeadlineExceededError`), never returned.
- **Retries.** UNAVAILABLE (not ready, shutting down, nothing listening yet, the log not durable) is retried
  with jittered exponential backoff (`RetryPolicy`), never past the deadline; no other status is. Retrying a
  check-and-record is safe: the same message asked again is answered as a repeat. Server streams are retried
  only before their first message, imports never.
- **Batches.** `check_attestations(items)` sends batches of at most `MAX_BATCH_SIZE` (the server's cap, or the
  client's smaller `batch_size`) and returns one decision per item, in order. A pubkey named twice in one call
  is refused before anything is sent.
- **The global high watermark.** `set_high_watermark(slot, epoch)`, `high_watermark()` (None when none is
  set) and `remove_high_watermark()`, as `HighWatermark(slot, epoch)` values; retried like any admin call (each
  is idempotent).
- **TLS.** `tls=TlsOptions(ca=..., client_cert=..., client_key=...)`, each PEM bytes or a path.
- **Cheap to import.** Neither the store nor the interchange parsers are imported, so the `health` probe that
  uses this client starts fast.

Errors (`sidecar.client._errors`), each with `code` (the gRPC status, or None when the client found the
problem itself), `details` and `target`; `str(error)` is one line, `server HOST:PORT: CODE: details`:

    SidecarError                            (sidecar.errors)
    └── SidecarClientError                  a call gave no answer to use: do not sign
        ├── SidecarUnavailableError         UNAVAILABLE after the retries allowed, or CANCELLED (server closing)
        ├── SidecarDeadlineExceededError    DEADLINE_EXCEEDED, or the answer came after the deadline
        ├── SidecarOverloadedError          RESOURCE_EXHAUSTED (--max-concurrent-rpcs)
        ├── SidecarRefusedRequestError      INVALID_ARGUMENT, or refused by the client before sending
        ├── SidecarWrongNetworkError        FAILED_PRECONDITION: another genesis validators root
        ├── SidecarPermissionDeniedError    PERMISSION_DENIED, UNAUTHENTICATED (mutual TLS identities)
        ├── SidecarNotFoundError            NOT_FOUND (an unregistered key to export, an unknown health service)
        └── SidecarProtocolError            any other status, or a response that breaks the contract

Bad local configuration (an unreadable certificate file, a client certificate without its key) raises
`sidecar.errors.ConfigurationError` when the client is created.
"""

from sidecar.client._async import AsyncSidecarClient
from sidecar.client._errors import (
    SidecarClientError,
    SidecarDeadlineExceededError,
    SidecarNotFoundError,
    SidecarOverloadedError,
    SidecarPermissionDeniedError,
    SidecarProtocolError,
    SidecarRefusedRequestError,
    SidecarUnavailableError,
    SidecarWrongNetworkError,
)
from sidecar.client._sync import SidecarClient
from sidecar.client._transport import NO_RETRY, RetryPolicy, Timeouts, TlsOptions
from sidecar.client._values import (
    MAX_BATCH_SIZE,
    Attestation,
    Checkpoint,
    DecisionRecord,
    HighWatermark,
    ImportReport,
    ImportStatus,
    Reason,
    Registration,
    ServingStatus,
    SigningDecision,
    ValidatorImportResult,
    ValidatorSummary,
    decision_from_proto,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "NO_RETRY",
    "AsyncSidecarClient",
    "Attestation",
    "Checkpoint",
    "DecisionRecord",
    "HighWatermark",
    "ImportReport",
    "ImportStatus",
    "Reason",
    "Registration",
    "RetryPolicy",
    "ServingStatus",
    "SidecarClient",
    "SidecarClientError",
    "SidecarDeadlineExceededError",
    "SidecarNotFoundError",
    "SidecarOverloadedError",
    "SidecarPermissionDeniedError",
    "SidecarProtocolError",
    "SidecarRefusedRequestError",
    "SidecarUnavailableError",
    "SidecarWrongNetworkError",
    "SigningDecision",
    "Timeouts",
    "TlsOptions",
    "ValidatorImportResult",
    "ValidatorSummary",
    "decision_from_proto",
]
