"""kill -9 a real `slashing-sidecar serve` process under concurrent load, restart it on the same directory, and
check that nothing it answered ALLOWED was forgotten.

Each test owns one data directory and kills the server several times in a row, each time at a random moment of a
load phase (random delays land kills mid-group-commit, mid-checkpoint with a checkpoint every 0.2 s, and
mid-rotation with 4 KiB segments). After every kill:

(c) `slashing-sidecar verify` (server stopped) may report a torn tail and nothing else, and the restart must then
    say it repaired it;
(a) after the restart, every message ever answered ALLOWED is re-sent and must be ALLOWED as a repeat, and a
    conflicting message at the same target or slot must be refused as a double vote or proposal;
(b) over every ALLOWED answer of every phase, a brute-force checker finds no double vote, surround or double
    proposal.

Every fourth kill comes after a SIGTERM (a supervisor's grace period running out mid-drain or mid final
checkpoint), every third restart is itself killed at a random moment (before, during or after recovery), and a
test ends with a graceful stop (SIGTERM) under load, checked the same way, then a clean `verify`.

Five variants: plain; `--archive-segments` (one more rename to interrupt); a one-epoch history window (pruning
raises floors constantly, and recovery must restore them); both; and a lone caller (each allowed record is then
written by the server's event loop itself rather than its flusher thread). Each test kills a server 8 times: 5
plain SIGKILLs under load, 2 during a restart, 1 after a SIGTERM (unless the shutdown beat it); the default suite
so makes 35 to 40 kills, the `slow` variant (`pytest -m slow tests/crash`) 10 x 20 more. The seed is in the test id
and in every failure message:
`pytest tests/crash -k seed-3` replays the same choices (thread timing aside). Each test prints its statistics
(`-s` shows them): how many kills left a checkpoint or a segment half-created, and how many left a torn tail.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.domain import SLOTS_PER_EPOCH
from tests.support.keys import pubkey, root_for
from tests.support.processes import READY, SERVING_ON, ServerProcess, cli_in_process, serve_command
from tests.support.requests import register_request

from .ledger import Attestation, Block, Ledger
from .load import MessageSpace, SigningLoad, check_everything_recorded

GENESIS_VALIDATORS_ROOT = root_for("crash-tier genesis")
ACTIVE_VALIDATORS = 16
# Registered but never signing: they make each checkpoint big enough (tens of milliseconds to encode and write)
# that a fair share of random kills lands inside one.
IDLE_VALIDATORS = 3000
CHECKPOINT_INTERVAL = 0.2
SERVE_OPTIONS = (
    "--checkpoint-interval",
    str(CHECKPOINT_INTERVAL),
    "--checkpoint-keep",
    "2",
    "--log-segment-bytes",
    "4096",
    "--shutdown-grace",
    "2",
)
# Log lines that mean something went wrong inside the server, killed or not.
SERVER_TROUBLE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
CHECKPOINT_OR_READY_LINE = re.compile(
    r"^(\S+)Z \S+ +sidecar\.server: (?:ready: |checkpoint \S+: \d+ validators)", re.M
)


@dataclass(frozen=True)
class Variant:
    """Server options that change what a crash can interrupt, and the message space that goes with them."""

    name: str
    options: tuple[str, ...] = ()
    window_epochs: int | None = None  # --history-window-epochs, when small enough to prune during the test
    slot_step: int = 8  # how far the block window moves per phase
    unary_callers: int = 2
    batch_callers: int = 2

    def prunable(self, highest_target: int, highest_slot: int) -> Callable[[Attestation | Block], bool]:
        """Which allowed messages the server may have pruned, given the highest target and slot ever sent."""
        window = self.window_epochs
        if window is None:
            return lambda message: False
        return lambda message: (
            message.target_epoch < highest_target - window
            if isinstance(message, Attestation)
            else message.slot < highest_slot - window * SLOTS_PER_EPOCH
        )


VARIANTS = {
    "plain": Variant("plain"),
    # Segments covered by checkpoints are moved to DIR/archive instead of deleted: another rename to interrupt.
    "archive": Variant("archive", ("--archive-segments",)),
    # A one-epoch history window: pruning raises floors all the time, and recovery must restore them exactly.
    "pruning": Variant("pruning", ("--history-window-epochs", "1"), window_epochs=1, slot_step=120),
    "pruning-archive": Variant(
        "pruning-archive", ("--history-window-epochs", "1", "--archive-segments"), window_epochs=1, slot_step=120
    ),
    # One caller at a time: the server writes each allowed record on its event loop instead of the flusher.
    "lone-caller": Variant("lone-caller", unary_callers=1, batch_callers=0),
}


@dataclass
class KillStats:
    kills_under_load: int = 0
    kills_while_starting: dict[str, int] = field(default_factory=dict)
    shutdowns: dict[str, int] = field(default_factory=dict)  # SIGTERM then SIGKILL: how each one ended
    torn_tails: int = 0
    mid_checkpoint: int = 0
    checkpoint_file_half_written: int = 0
    mid_rotation: int = 0
    allowed: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    @property
    def kills(self) -> int:
        stopped = self.shutdowns.get("stopped in time", 0)
        return self.kills_under_load - stopped + sum(self.kills_while_starting.values())

    def line(self, seed: int) -> str:
        return (
            f"seed {seed}: {self.kills} kills ({self.kills_under_load} under load: {self.mid_checkpoint} during a "
            f"checkpoint, {self.checkpoint_file_half_written} leaving its file half-written, {self.mid_rotation} "
            f"leaving a segment half-created, {self.torn_tails} leaving a torn "
            f"tail; SIGTERM first: {self.shutdowns}; while starting: {self.kills_while_starting}), "
            f"{self.allowed} distinct messages allowed, "
            f"answers {dict(sorted(self.answers.items()))}"
        )


def register(server: ServerProcess, pubkeys: Sequence[bytes]) -> None:
    response = server.admin.RegisterValidators(register_request(*pubkeys), timeout=30)
    assert response.registered == len(pubkeys)


def assert_server_log_clean(server: ServerProcess, seed: int) -> None:
    trouble = [line for line in server.lines if SERVER_TROUBLE.search(line)]
    assert not trouble, f"seed {seed}: the server logged trouble in {server.log_path}:\n" + "\n".join(trouble[:20])


def verify_offline(data_dir: Path, seed: int, *, torn_tail_allowed: bool) -> bool:
    """Runs `slashing-sidecar verify`; returns whether it reported a torn tail (the only damage allowed)."""
    code, out, err = cli_in_process("verify", "--data-dir", str(data_dir))
    damage = [line for line in out.splitlines() if line.startswith("DAMAGE")]
    torn = [line for line in damage if "torn tail" in line]
    other = [line for line in damage if "torn tail" not in line]
    context = f"seed {seed}: verify exited {code}:\n{out}{err}"
    assert not other, context
    assert torn_tail_allowed or not torn, context
    assert code == (1 if damage else 0), context
    assert out.rstrip().endswith(
        "verified: damage found (see above)" if damage else "verified: no damage found"
    ), context
    return bool(torn)


class KillCampaign:
    """One data directory, one ledger, many deaths. Every step asserts as it goes; `seed` is in every message."""

    def __init__(self, tmp_path: Path, seed: int, variant: Variant) -> None:
        self.tmp_path = tmp_path
        self.seed = seed
        self.variant = variant
        self.rng = random.Random(seed)
        self.data_dir = tmp_path / "data"
        self.command = serve_command(
            *SERVE_OPTIONS,
            *variant.options,
            data_dir=self.data_dir,
            genesis_validators_root=GENESIS_VALIDATORS_ROOT,
        )
        self.highest_target = 0
        self.highest_slot = 0
        self.active = [pubkey(index) for index in range(ACTIVE_VALIDATORS)]
        self.ledger = Ledger()
        self.stats = KillStats()
        self.starts = 0
        self.server: ServerProcess | None = None

    def _log_path(self, what: str) -> Path:
        self.starts += 1
        return self.tmp_path / f"server-{self.starts:02d}-{what}.log"

    def _start(self, what: str) -> ServerProcess:
        self.server = ServerProcess.launch(self.command, self._log_path(what)).wait_serving()
        return self.server

    def first_start(self) -> None:
        server = self._start("first")
        idle = range(ACTIVE_VALIDATORS, ACTIVE_VALIDATORS + IDLE_VALIDATORS)
        register(server, self.active + [pubkey(index) for index in idle])

    def load(self, phase: int) -> SigningLoad:
        """Signing load for one phase. Each phase moves the window on but overlaps the previous one, so it also
        conflicts with messages recorded before the last kill."""
        assert self.server is not None
        step = self.variant.slot_step
        space = MessageSpace(
            tuple(self.active),
            first_target=1 + 4 * phase,
            target_count=7,
            first_slot=1 + step * phase,
            slot_count=step + step // 2,
        )
        self.highest_target = max(self.highest_target, space.first_target + space.target_count - 1)
        self.highest_slot = max(self.highest_slot, space.first_slot + space.slot_count - 1)
        return SigningLoad(
            self.server.signing,
            GENESIS_VALIDATORS_ROOT,
            space,
            self.ledger,
            self.seed * 1000 + phase,
            unary_threads=self.variant.unary_callers,
            batch_threads=self.variant.batch_callers,
        )

    def kill_under_load(self, phase: int, *, terminate_first: bool) -> None:
        """SIGKILL at a random moment of a load phase; with `terminate_first`, the SIGKILL cuts a graceful
        shutdown short instead (SIGTERM first), as a supervisor whose grace period ran out would."""
        assert self.server is not None
        load = self.load(phase).start()
        time.sleep(self.rng.uniform(0.05, 1.0))
        if terminate_first:
            code = self.server.terminate_then_kill(self.rng.uniform(0.0, 0.3))
            assert code in (0, -signal.SIGKILL), f"seed {self.seed}: SIGTERM ended with {code}"
            outcome = "stopped in time" if code == 0 else "killed while stopping"
            self.stats.shutdowns[outcome] = self.stats.shutdowns.get(outcome, 0) + 1
        else:
            killed_at = time.time()
            self.server.kill()
            # The checkpoint loop sleeps one interval after each checkpoint (or readiness), then takes the next:
            # a kill later than that landed inside a checkpoint.
            last = last_checkpoint_or_ready(self.server.stderr)
            if last is not None and killed_at > last + CHECKPOINT_INTERVAL + 0.005:
                self.stats.mid_checkpoint += 1
        load.stop()
        self.server.close_channel()
        assert_server_log_clean(self.server, self.seed)
        self.server = None
        self.stats.kills_under_load += 1
        leftovers = leftover_files(self.data_dir)
        self.stats.checkpoint_file_half_written += leftovers["checkpoint.tmp"] > 0
        self.stats.mid_rotation += leftovers["log.tmp"] > 0

    def kill_while_starting(self) -> None:
        """A second death during the restart itself, before or after recovery, before any client call: SIGKILL
        at a random moment after the server bound its port (loading the checkpoint, replaying, repairing a torn
        tail, opening the log) or just after."""
        server = ServerProcess.launch(self.command, self._log_path("killed-starting"))
        try:
            server.wait_for(SERVING_ON)
        except BaseException:
            server.ensure_dead()
            raise
        time.sleep(self.rng.uniform(0.0, 0.15))
        server.kill()
        reached = "after recovery" if READY.search(server.stderr) else "during recovery"
        self.stats.kills_while_starting[reached] = self.stats.kills_while_starting.get(reached, 0) + 1

    def restart_and_check(self, label: str, *, torn_tail_allowed: bool = True) -> None:
        """(c) verify while stopped, restart, (a) every ALLOWED answer still recorded, (b) none conflict."""
        torn = verify_offline(self.data_dir, self.seed, torn_tail_allowed=torn_tail_allowed)
        self.stats.torn_tails += torn
        server = self._start("restart")
        if torn:
            assert "(torn tail repaired)" in server.ready_line(), f"seed {self.seed}: {server.ready_line()}"
        prunable = self.variant.prunable(self.highest_target, self.highest_slot)
        problems = check_everything_recorded(server.signing, GENESIS_VALIDATORS_ROOT, self.ledger, prunable)
        assert not problems, (
            f"seed {self.seed}, {label}: {len(problems)} answers forgotten or contradicted after the restart "
            f"(server log {server.log_path}):\n" + "\n".join(problems[:20])
        )
        conflicts = self.ledger.conflicts()
        assert not conflicts, f"seed {self.seed}: slashable pairs were both answered ALLOWED:\n" + "\n".join(
            conflicts
        )

    def stop_under_load(self, phase: int) -> None:
        """SIGTERM while clients sign: calls in flight finish, the rest get UNAVAILABLE, the exit is clean."""
        assert self.server is not None
        load = self.load(phase).start()
        time.sleep(self.rng.uniform(0.05, 0.5))
        code = self.server.stop()
        load.stop()
        self.server.close_channel()
        assert code == 0, f"seed {self.seed}: graceful stop under load failed:\n{self.server.stderr[-4000:]}"
        assert_server_log_clean(self.server, self.seed)
        self.server = None

    def stop(self) -> None:
        assert self.server is not None
        code = self.server.stop()
        self.server.close_channel()
        assert code == 0, f"seed {self.seed}: graceful stop failed:\n{self.server.stderr[-4000:]}"
        assert_server_log_clean(self.server, self.seed)
        self.server = None

    def ensure_dead(self) -> None:
        if self.server is not None:
            self.server.ensure_dead()


def run_kill_campaign(tmp_path: Path, seed: int, variant: Variant, kills_under_load: int) -> KillStats:
    """`kills_under_load` kills at random moments of load phases, each followed by the full check: every fourth
    is SIGTERM then SIGKILL, every third restart is itself killed first. Then a graceful stop under load, checked
    the same way. Six phases: 5 plain SIGKILLs under load, 1 SIGTERM-then-SIGKILL, 2 kills while starting."""
    campaign = KillCampaign(tmp_path, seed, variant)
    try:
        campaign.first_start()
        for phase in range(kills_under_load):
            campaign.kill_under_load(phase, terminate_first=phase % 4 == 3)
            if phase % 3 == 1:
                verify_offline(campaign.data_dir, seed, torn_tail_allowed=True)
                campaign.kill_while_starting()
            campaign.restart_and_check(f"kill {phase + 1}")
        campaign.stop_under_load(kills_under_load)
        campaign.restart_and_check("graceful stop under load", torn_tail_allowed=False)
        campaign.stop()
        verify_offline(campaign.data_dir, seed, torn_tail_allowed=False)
    finally:
        campaign.ensure_dead()
    stats = campaign.stats
    attestations, blocks = campaign.ledger.snapshot()
    stats.allowed = len(attestations) + len(blocks)
    stats.answers = dict(campaign.ledger.counts)
    # A load that never got an ALLOWED through proves nothing: the workload itself is part of the test.
    assert len(attestations) >= 10 * kills_under_load and len(blocks) >= 5 * kills_under_load, (
        f"seed {seed}: too little allowed: {stats}"
    )
    return stats


@pytest.mark.parametrize(
    ("seed", "variant"),
    [pytest.param(seed, name, id=f"seed-{seed}-{name}") for seed, name in enumerate(VARIANTS, start=1)],
)
def test_kill9_under_load_loses_no_allowed_answer(tmp_path: Path, seed: int, variant: str) -> None:
    stats = run_kill_campaign(tmp_path, seed, VARIANTS[variant], kills_under_load=6)
    print(stats.line(seed))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "variant"),
    [
        pytest.param(seed, name, id=f"seed-{seed}-{name}")
        for seed, name in zip(range(100, 100 + 2 * len(VARIANTS)), [*VARIANTS] * 2, strict=True)
    ],
)
def test_kill9_under_load_loses_no_allowed_answer_long(tmp_path: Path, seed: int, variant: str) -> None:
    stats = run_kill_campaign(tmp_path, seed, VARIANTS[variant], kills_under_load=15)
    print(stats.line(seed))


def last_checkpoint_or_ready(log_text: str) -> float | None:
    """Unix time of the server's last "ready:" or "checkpoint ...: N validators" line: the scheduled checkpoint
    loop starts its next checkpoint one interval after it."""
    times = [
        datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        for match in CHECKPOINT_OR_READY_LINE.finditer(log_text)
    ]
    return max(times, default=None)


def leftover_files(data_dir: Path) -> dict[str, int]:
    """The temporary files a kill left behind: a checkpoint or a new segment caught half-written."""
    return {
        "checkpoint.tmp": len(list((data_dir / "checkpoints").glob("*.ckpt.tmp"))),
        "log.tmp": len(list((data_dir / "log").glob("*.log.tmp"))),
    }
