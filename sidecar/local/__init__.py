"""The embedded backend: one data directory, served by one process (see `sidecar.backend` for the seam).

`LocalBackend` puts the event loop in front of `sidecar.store.Store`, which owns the directory, the decision log,
the checkpoints and the in-memory histories: it waits for the log's group commit before an ALLOWED answer
(`sidecar.local.durability`) and runs long blocking work (imports, exports, checkpoints) off the loop.
"""

from sidecar.local.backend import LocalBackend

__all__ = ["LocalBackend"]
