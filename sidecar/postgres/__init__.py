"""The shared backend: one PostgreSQL database, served by any number of sidecar replicas at once (see
`sidecar.backend` for the seam).

Each replica decides with the same pure rules and the same `ValidatorHistory` as the local backend; the database
holds the histories (`sidecar.postgres.schema`), arbitrates between replicas with row locks, and makes a decision
durable by committing it (`sidecar.postgres.backend`). Whether the database itself keeps a commit is checked at
start and on every new connection (`sidecar.postgres.durability`).
"""

from sidecar.postgres.backend import PostgresBackend, describe_url
from sidecar.postgres.durability import DatabaseDurability

__all__ = ["DatabaseDurability", "PostgresBackend", "describe_url"]
