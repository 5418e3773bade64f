"""slashing-sidecar: a slashing-protection database for Ethereum validators, served over gRPC.

Layout (one owner per responsibility):

- `rules`: the slashing rules, pure functions over a validator's history;
- `history`: one validator's records, indexed for the rules;
- `storage`: log framing, the segmented decision log with group commit, checkpoints, the directory lock;
- `store`: the one owner of a data directory, its state and its files;
- `service`, `server`: the gRPC servicers and the server's lifecycle;
- `cli`: the `slashing-sidecar` command; `metrics`, `metrics_http`, `logs`: operations.

The EIP-3076 format itself lives in the separate top-level package `interchange`.
"""

__all__ = ["__version__"]

__version__ = "0.3.0"
