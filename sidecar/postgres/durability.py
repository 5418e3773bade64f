"""Whether the database itself keeps a commit: read at start and on every new connection, judged here.

The four settings, as the sidecar's own session sees them (`current_setting`: role and database settings and
connection options included, which is what its commits obey):

* `fsync = off`: a power loss can lose or corrupt committed data. Refused.
* `synchronous_commit = off`: a commit is acknowledged before its WAL is flushed; a crash loses the last ones.
  Refused.
* `synchronous_commit = local` while `synchronous_standby_names` names standbys: the operator set up synchronous
  replication, but these commits do not wait for it, so a failover to the standby (which the operator believes
  safe) loses acknowledged decisions. Refused too: the trap is that it looks safe. Without standbys named, `local`
  is the same as `on`.
* `full_page_writes = off`: a crash during a page write can leave a torn page that WAL replay cannot repair,
  unless the file system writes pages atomically (ZFS and the like, where operators turn it off on purpose).
  Warned about, not refused.

Each refusal is lifted by `--allow-unsafe-database`, with a warning at every start.

Whether a commit survives the loss of the primary (its host, its disk) is said once at startup, as a warning when
it does not: only with a synchronous standby (`synchronous_standby_names` set and `synchronous_commit` `on`,
`remote_apply`, or `remote_write`: then the standby has the commit, in `remote_write` at least in its operating
system's memory). The standbys streaming from the server (`pg_stat_replication`, readable by any role) are
counted, so that the warning can say when one is there but asynchronous: the setup that looks highly available
and is not for slashing protection (a failover to it loses the newest acknowledged decisions; the failover drill
in tests/postgres/test_failover.py shows it, docs/high-availability.md tells what to do).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DURABILITY_QUERY", "DatabaseDurability"]

DURABILITY_QUERY = (
    "SELECT current_setting('fsync'), current_setting('synchronous_commit'), "
    "current_setting('full_page_writes'), current_setting('synchronous_standby_names'), pg_is_in_recovery(), "
    "(SELECT count(*) FROM pg_stat_replication)::int"
)


@dataclass(frozen=True, slots=True)
class DatabaseDurability:
    fsync: str
    synchronous_commit: str
    full_page_writes: str
    synchronous_standby_names: str
    in_recovery: bool = False
    standbys: int = 0  # streaming from this server now, synchronous or not

    @classmethod
    def of_row(cls, row: tuple[str, str, str, str, bool, int]) -> DatabaseDurability:
        return cls(*row)

    @property
    def standbys_named(self) -> bool:
        return bool(self.synchronous_standby_names.strip())

    def unsafe(self) -> list[str]:
        """Why a commit acknowledged by this database may be lost (empty: it may not)."""
        reasons = []
        if self.fsync == "off":
            reasons.append("fsync is off (a power loss can lose committed decisions)")
        if self.synchronous_commit == "off":
            reasons.append("synchronous_commit is off (a crash can lose the last acknowledged commits)")
        if self.synchronous_commit == "local" and self.standbys_named:
            reasons.append(
                "synchronous_commit is local while synchronous_standby_names is set (commits do not wait for the "
                "synchronous standby, so a failover to it can lose acknowledged decisions)"
            )
        return reasons

    def warnings(self) -> list[str]:
        if self.full_page_writes == "off":
            return ["full_page_writes is off: a crash during a page write can corrupt the database unless its "
                    "file system writes pages atomically"]  # fmt: skip
        return []

    def survives_primary_loss(self) -> bool:
        return self.standbys_named and self.synchronous_commit in ("on", "remote_apply", "remote_write")

    def describe(self) -> str:
        """One sentence for the startup log: the settings, and whether a commit survives losing the primary."""
        standbys = self.synchronous_standby_names or "''"
        settings = (
            f"fsync={self.fsync}, synchronous_commit={self.synchronous_commit}, "
            f"full_page_writes={self.full_page_writes}, "
            f"synchronous_standby_names={standbys}"
        )
        if self.survives_primary_loss():
            return (
                f"database durability: {settings}: a commit survives the loss of the primary (synchronous standby)"
            )
        if self.standbys:
            streaming = (
                f"{self.standbys} asynchronous standby{'s' if self.standbys > 1 else ''} streaming from it: "
                f"commits do not wait for {'them' if self.standbys > 1 else 'it'}"
            )
        else:
            streaming = "no synchronous standby"
        return (
            f"database durability: {settings}: a commit does NOT survive the loss of the primary ({streaming}): "
            "a failover to an asynchronous standby or a restore from backup can lose acknowledged decisions; see "
            "docs/high-availability.md"
        )
