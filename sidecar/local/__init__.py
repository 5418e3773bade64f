"""The embedded backend: one data directory, served by one process (see `sidecar.backend` for the seam).

The package's layout is its parts, each with one owner:

* ``backend``: `LocalBackend`, the event loop in front of the store; long blocking work runs off the loop.
* ``durability``: group commit meets the event loop (waiting for a decision to be durable, the lone-call rule).
* ``store``: `Store`, the lock, the hot path (check and record) and the lifecycle; composes the parts below.
* ``options``: `StoreOptions`, what an operator chooses for a directory.
* ``state``: the in-memory histories and applying a decision, a registration or an import to them (the one
  place both the hot path and recovery call).
* ``layout``: every path of the data directory, and its identity file.
* ``recovery``: checkpoint load and log replay, shared by open and repair.
* ``repair``: the operator's way out of real damage (keep what precedes it, raise floors, quarantine the rest).
* ``imports``, ``export``, ``checkpoints``: EIP-3076 import (staging and apply), export, checkpoint writing.
* ``gc``: process-wide collector tuning while a large state is built.

`create_from_interchange` is the one local operation without a counterpart behind the seam: creating a data
directory from an EIP-3076 document (the offline `import` into a new directory). Both names are imported lazily,
so that offline tools (verify, audit, repair) load no event loop machinery, and so that `sidecar.audit`, which
`backend` itself uses, can use `layout` without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.local.backend import LocalBackend
    from sidecar.local.store import create_from_interchange

__all__ = ["LocalBackend", "create_from_interchange"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from sidecar.local.backend import LocalBackend

        return LocalBackend
    if name == "create_from_interchange":
        from sidecar.local.store import create_from_interchange

        return create_from_interchange
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
