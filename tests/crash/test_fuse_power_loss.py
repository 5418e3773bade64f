"""Power loss below the process: the real server on a FUSE file system that forgets what was never made durable.

`tests/crash/powercut_fs.py` mounts a file system whose every change lives in memory until an fsync of the file
(its contents) or of its directory (its name) makes it durable; a power cut (SIGKILL of the file system's
process) discards the rest. Unlike the simulation through the file-layer seam (test_power_loss.py), nothing here
trusts the sidecar's own bookkeeping: a missing `fdatasync`, or a rename never followed by a directory fsync,
loses data here exactly as it would on a real disk.

Each cycle: mount, start `slashing-sidecar serve` on the mount (4 KiB segments, so the log rotates constantly,
and a checkpoint every 0.2 s, so segments are deleted and checkpoints renamed into place under load), sign under
concurrent load, `kill -9` the server at a random moment, cut the power, remount, restart, and re-send every
message ever answered ALLOWED: each must be ALLOWED as a repeat, and a conflicting one refused. At the end, no two
ALLOWED answers of the whole run conflict.

The negative control proves that this check can fail: the same run with the server's fsyncs turned into no-ops
(Debian's `eatmydata`, an LD_PRELOAD library) must be caught forgetting ALLOWED decisions.

The default suite runs a few cycles (`CI_CYCLES`); `pytest -m slow tests/crash` runs more. Without FUSE (no
/dev/fuse, fusermount3, libfuse3 or mfusepy) or eatmydata these tests skip, naming what is missing, except in CI
(`CI` set), where they fail instead.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.storage import FileOps, list_segments
from tests.support.keys import pubkey, root_for
from tests.support.processes import ServerProcess, serve_command
from tests.support.requests import register_request

from .ledger import Ledger
from .load import MessageSpace, SigningLoad, check_everything_recorded
from .powercut_fs import PowerCutMount, fuse_missing

GENESIS_VALIDATORS_ROOT = root_for("fuse power-loss genesis")
ACTIVE_VALIDATORS = 12
IDLE_VALIDATORS = 500  # registered, never signing: checkpoints take long enough to be cut in the middle
SERVE_OPTIONS = (
    # Keep every record: the re-check then wants every ALLOWED answer back as a repeat, however many cycles ran
    # (with the default 64-epoch window, the long runs' early votes are pruned and refused by a floor instead).
    "--history-window-epochs",
    "0",
    "--checkpoint-interval",
    "0.2",
    "--checkpoint-keep",
    "2",
    "--log-segment-bytes",
    "4096",
)
CI_CYCLES = 6
SLOW_CYCLES = 25
IN_CI = bool(os.environ.get("CI"))


def require(missing: str | None) -> None:
    if missing is None:
        return
    message = f"needs {missing}"
    if IN_CI:
        pytest.fail(f"{message}: CI must run the power-loss tier")
    pytest.skip(message)


@pytest.fixture
def fuse() -> None:
    require(fuse_missing())


def eatmydata_missing() -> str | None:
    return None if shutil.which("eatmydata") else "eatmydata (Debian package eatmydata; scripts/setup-system)"


@dataclass
class RunStats:
    cycles: int = 0
    allowed: int = 0
    checkpoints: int = 0
    highest_segment_start: int = 0
    lost: list[str] = field(default_factory=list)  # what the re-check found wrong, every cycle together


class PowerCutRun:
    """One backing store, one ledger, many power cuts. `seed` is in every failure message."""

    def __init__(self, tmp_path: Path, seed: int, *, server_prefix: tuple[str, ...] = ()) -> None:
        self.tmp_path = tmp_path
        self.seed = seed
        self.rng = random.Random(seed)
        self.mount = PowerCutMount(tmp_path / "backing", tmp_path / "mnt", tmp_path / "fs.log")
        self.data_dir = tmp_path / "mnt" / "data"
        self.server_prefix = server_prefix
        self.active = [pubkey(index) for index in range(ACTIVE_VALIDATORS)]
        self.ledger = Ledger()
        self.stats = RunStats()
        self.starts = 0
        self.server: ServerProcess | None = None

    def _start(self, what: str, prefix: tuple[str, ...] = ()) -> ServerProcess:
        self.starts += 1
        log_path = self.tmp_path / f"server-{self.starts:02d}-{what}.log"
        command = serve_command(
            *SERVE_OPTIONS, data_dir=self.data_dir, genesis_validators_root=GENESIS_VALIDATORS_ROOT, prefix=prefix
        )
        self.server = ServerProcess.launch(command, log_path).wait_serving()
        return self.server

    def _stop_server(self) -> None:
        if self.server is not None:
            self.stats.checkpoints += self.server.stderr.count("sidecar.server: checkpoint ")
            self.server.ensure_dead()
            self.server = None

    def set_up(self) -> None:
        """A first, honest start registers the validators and stops gracefully: durable whatever comes next."""
        self.mount.mount()
        server = self._start("setup")
        idle = range(ACTIVE_VALIDATORS, ACTIVE_VALIDATORS + IDLE_VALIDATORS)
        pubkeys = self.active + [pubkey(index) for index in idle]
        response = server.admin.RegisterValidators(register_request(*pubkeys), timeout=60)
        assert response.registered == len(pubkeys)
        assert server.stop() == 0, server.stderr[-4000:]
        self._stop_server()

    def cycle(self, phase: int) -> None:
        """Sign under load, kill -9 the server at a random moment, cut the power, remount."""
        server = self._start("load", self.server_prefix)
        space = MessageSpace(
            tuple(self.active), first_target=1 + 4 * phase, target_count=7, first_slot=1 + 8 * phase, slot_count=12
        )
        load = SigningLoad(server.signing, GENESIS_VALIDATORS_ROOT, space, self.ledger, self.seed * 1000 + phase)
        load.start()
        # Long enough for several checkpoints (every 0.2 s) and many rotations (4 KiB segments).
        time.sleep(self.rng.uniform(0.4, 1.2))
        server.kill()
        load.stop()
        self._stop_server()
        self.mount.cut_power()
        self.mount.mount()
        self.stats.cycles += 1

    def check(self) -> list[str]:
        """Restart on the remounted file system; every ALLOWED answer so far must still be recorded."""
        server = self._start("check")
        problems = check_everything_recorded(server.signing, GENESIS_VALIDATORS_ROOT, self.ledger)
        assert server.stop() == 0, server.stderr[-4000:]
        self._stop_server()
        segments = list_segments(self.data_dir / "log", FileOps())  # stopped: no checkpoint deletes one meanwhile
        self.stats.highest_segment_start = max(
            [self.stats.highest_segment_start, *(segment.first_sequence for segment in segments)]
        )
        self.stats.lost.extend(problems)
        return problems

    def close(self) -> None:
        self._stop_server()
        self.mount.close()


MakeRun = Callable[..., PowerCutRun]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    """Makes runs under `tmp_path`; their servers and mounts are taken down at the end, whatever happened."""
    runs: list[PowerCutRun] = []

    def factory(seed: int, *, server_prefix: tuple[str, ...] = ()) -> PowerCutRun:
        run = PowerCutRun(tmp_path / f"run-{len(runs)}", seed, server_prefix=server_prefix)
        runs.append(run)
        return run

    yield factory
    for run in runs:
        run.close()


def run_cycles(run: PowerCutRun, cycles: int) -> None:
    run.set_up()
    for phase in range(cycles):
        run.cycle(phase)
        problems = run.check()
        assert not problems, (
            f"seed {run.seed}, power cut {phase + 1}: {len(problems)} ALLOWED answers not recorded after the "
            "restart:\n" + "\n".join(problems[:20])
        )
    conflicts = run.ledger.conflicts()
    assert not conflicts, f"seed {run.seed}: " + "\n".join(conflicts[:20])
    stats = run.stats
    stats.allowed = len(run.ledger.allowed_attestations) + len(run.ledger.allowed_blocks)
    print(
        f"seed {run.seed}: {stats.cycles} power cuts, {stats.allowed} distinct messages allowed and all kept, "
        f"{stats.checkpoints} checkpoints, newest segment starts at sequence {stats.highest_segment_start}"
    )
    # The run exercised what it claims to: many decisions, checkpoints and rotations (4 KiB segments).
    assert stats.allowed > 0 and stats.checkpoints > 0, stats
    assert stats.highest_segment_start > 1, f"seed {run.seed}: the log never rotated"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1])
@pytest.mark.usefixtures("fuse")
def test_every_allowed_answer_survives_power_cuts(make_run: MakeRun, seed: int) -> None:
    run_cycles(make_run(seed), CI_CYCLES)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.usefixtures("fuse")
def test_every_allowed_answer_survives_many_power_cuts(make_run: MakeRun, seed: int) -> None:
    run_cycles(make_run(seed), SLOW_CYCLES)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("fuse")
def test_negative_control_without_fsync_the_test_catches_lost_decisions(make_run: MakeRun) -> None:
    require(eatmydata_missing())
    run = make_run(7, server_prefix=("eatmydata",))
    run.set_up()
    run.cycle(0)
    allowed = len(run.ledger.allowed_attestations) + len(run.ledger.allowed_blocks)
    problems = run.check()
    forgotten = [problem for problem in problems if "wanted VERDICT_ALLOWED/REASON_ALLOWED_REPEAT" in problem]
    print(
        f"negative control: {allowed} distinct messages answered ALLOWED without fsync, {len(forgotten)} of them "
        f"forgotten after the power cut ({len(problems)} problems in all)"
    )
    assert allowed > 0
    # Without fsync nothing the load phase did reaches the backing store: the check must see it forgotten.
    assert forgotten, "the power-loss check did not notice a server that never fsyncs"
