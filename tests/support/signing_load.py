"""Sidecar replicas as real processes over one PostgreSQL database, and a signing load spread over them whose every
call goes into a `History` (tests/support/history_checker.py), for the failover drills and the replica kill.

A replica is `python -m sidecar serve --database-url URL` in a child process (started and killed with
`tests.support.processes.ServerProcess`), driven through the typed client `sidecar.client.SidecarClient` with no
retries, so that every attempt is one recorded call.

The load (`SigningLoad`) is many validators, blocks and attestations, and deliberate conflicts. Every thread of
every replica draws from one message space: a window of heights that moves on by one every `len(validators)`
calls of all threads together, so each validator is asked about a height about once, and often several times by
threads on different replicas at once. On top of that, on purpose:

* another root for a slot or a vote already asked about (double proposals and double votes, across replicas);
* sources one to three epochs back (a vote surrounding an earlier one), and late messages a height or two behind
  (a vote surrounded by a recorded one);
* batches of three attestations of distinct validators (`check_attestations`).

Most conflicts are refused; the checker is there for the one that would not be.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.client import NO_RETRY, Attestation, SidecarClient, Timeouts
from tests.support.history_checker import AttestationMessage, BlockMessage, History, Message, Outcome
from tests.support.keys import root_for
from tests.support.processes import ServerProcess, serve_command

__all__ = [
    "Replica",
    "SigningLoad",
    "ask",
    "conflicting",
    "replica_processes",
    "tcp_ports_of",
]

CALL_TIMEOUT = 5.0
ERROR_PAUSE = 0.05


@dataclass
class Replica:
    """One sidecar process and a client of it."""

    name: str
    process: ServerProcess
    client: SidecarClient

    def log_text(self) -> str:
        return self.process.stderr


@contextlib.contextmanager
def replica_processes(
    database_url: str,
    count: int,
    genesis_validators_root: bytes,
    log_dir: Path,
    call_timeout: float = CALL_TIMEOUT,
) -> Iterator[list[Replica]]:
    """`count` replicas serving from `database_url`, each SERVING when this yields; killed at the end (whatever
    state a test left them in)."""
    replicas: list[Replica] = []
    try:
        for index in range(count):
            name = f"replica-{index}"
            command = serve_command(database_url=database_url, genesis_validators_root=genesis_validators_root)
            process = ServerProcess.launch(command, log_dir / f"{name}.log").wait_serving()
            client = SidecarClient(
                f"127.0.0.1:{process.port}",
                genesis_validators_root=genesis_validators_root,
                timeouts=Timeouts(signing=call_timeout, batch=call_timeout),
                retry=NO_RETRY,
            )
            replicas.append(Replica(name, process, client))
        yield replicas
    finally:
        for replica in replicas:
            replica.client.close()
            replica.process.ensure_dead()


def conflicting(message: Message, tag: str = "probe") -> Message:
    """A message slashable together with `message`: the same slot with another root (double proposal), or the same
    source and target with another root (double vote)."""
    if isinstance(message, BlockMessage):
        return BlockMessage(message.pubkey, message.slot, root_for(tag, message.signing_root.hex()))
    return AttestationMessage(
        message.pubkey, message.source_epoch, message.target_epoch, root_for(tag, message.signing_root.hex())
    )


def ask(
    replica: Replica, history: History, messages: Sequence[Message], timeout: float | None = None
) -> list[Outcome]:
    """One call to `replica` about `messages` (one block, one attestation, or attestations of distinct keys as a
    batch), recorded in `history`."""
    client = replica.client

    def call() -> list[bool]:
        if len(messages) == 1 and isinstance(messages[0], BlockMessage):
            block = messages[0]
            return [client.check_block(block.pubkey, block.slot, block.signing_root, timeout=timeout).allowed]
        votes = [message for message in messages if isinstance(message, AttestationMessage)]
        assert len(votes) == len(messages), "blocks go one at a time"
        if len(votes) == 1:
            vote = votes[0]
            decision = client.check_attestation(
                vote.pubkey, vote.source_epoch, vote.target_epoch, vote.signing_root, timeout=timeout
            )
            return [decision.allowed]
        items = [Attestation(v.pubkey, v.source_epoch, v.target_epoch, v.signing_root) for v in votes]
        return [decision.allowed for decision in client.check_attestations(items, timeout=timeout)]

    return history.attempt(replica.name, messages, call)


class SigningLoad:
    """Threads signing over every replica until `stop` (see the module doc). `threads_per_replica` threads per
    replica; `first_height` is where the window starts (keep it above any height a test used before)."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        history: History,
        validators: Sequence[bytes],
        seed: int = 0,
        threads_per_replica: int = 2,
        first_height: int = 10,
    ) -> None:
        self.replicas = list(replicas)
        self.history = history
        self.validators = list(validators)
        self.first_height = first_height
        self._seed = seed
        self._ticks = itertools.count()
        self._stop = threading.Event()
        self._paused: set[str] = set()
        self._threads = [
            threading.Thread(target=self._run, args=(replica, index), name=f"load-{replica.name}-{index}")
            for replica in self.replicas
            for index in range(threads_per_replica)
        ]

    def start(self) -> SigningLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    def leave_out(self, replica: Replica) -> None:
        """No more calls to `replica` (killed, say)."""
        self._paused.add(replica.name)

    def __enter__(self) -> SigningLoad:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self, replica: Replica, index: int) -> None:
        rng = random.Random(f"{self._seed}-{replica.name}-{index}")
        while not self._stop.is_set():
            if replica.name in self._paused:
                return
            messages = self._draw(rng, next(self._ticks))
            if ask(replica, self.history, messages)[0].indeterminate:
                time.sleep(ERROR_PAUSE)  # the replica is not serving: do not spin

    def _draw(self, rng: random.Random, tick: int) -> list[Message]:
        height = self.first_height + tick // len(self.validators)
        if rng.random() < 0.15:
            height -= rng.choice((1, 2))  # late: may be surrounded by a vote already recorded
        variant = rng.choice((0, 0, 0, 1))  # 1: another root for the same slot or vote
        kind = rng.random()
        if kind < 0.4:
            pubkey = rng.choice(self.validators)
            return [BlockMessage(pubkey, height, root_for("block", pubkey.hex(), height, variant))]
        count = 3 if kind > 0.85 else 1
        messages: list[Message] = []
        for pubkey in rng.sample(self.validators, count):
            source = max(0, height - rng.choice((1, 1, 1, 2, 3)))  # two or three back: surrounds
            root = root_for("attestation", pubkey.hex(), source, height, variant)
            messages.append(AttestationMessage(pubkey, source, height, root))
        return messages


def tcp_ports_of(pid: int) -> set[int]:
    """The local ports of the TCP sockets process `pid` holds open (from /proc: its socket inodes, looked up in
    the kernel's TCP tables), to tell its PostgreSQL sessions in pg_stat_activity (`client_port`)."""
    inodes = set()
    fd_dir = Path("/proc") / str(pid) / "fd"
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().name
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (Path("/proc") / str(pid) / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
