"""Model-based testing of the whole store: a Hypothesis state machine signs (blocks, attestations, batches),
registers, imports (EIP-3076 documents, both strategies), exports and re-imports into a fresh directory, takes
checkpoints, cuts the power and reopens (through the file-layer seam's power-loss model) and repairs; after
every step the store must decide every candidate as a plain in-memory model does.

The model is `tests.rules.rules_oracle.Protection`: EIP-3076 as written, one imported file at a time, plus the
consensus spec's slashing conditions, built from lists of messages. It knows nothing of the store's histories,
indexes, log or checkpoints. Decisions are compared with the tolerance of `tests.rules.test_rules_multi_import`
(`disagree`): the store may refuse a repeat that the model allows, never anything else. Every signing is
acknowledged only once durable, as the servicers do, so a power cut must lose nothing the model holds.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sidecar.backend import Strategy
from sidecar.domain import Pubkey, SigningRoot
from sidecar.local.options import StoreOptions
from sidecar.local.repair import repair_data_dir
from sidecar.local.store import Store
from sidecar.rules import Reason, check_attestation, check_block
from sidecar.storage import FileOps
from tests.rules.rules_oracle import Attestation, Block, Protection, Recorded
from tests.rules.rules_support import attestation_candidates, block_candidates, eip3076_document, recorded_from
from tests.rules.test_rules_multi_import import disagree
from tests.storage.fakes import PowerLossFileOps
from tests.support.keys import pubkey, signing_root

GENESIS = bytes(32)
KEYS = [pubkey(0xC0 + index) for index in range(3)]
ROOTS = [signing_root(0x10 + index) for index in range(3)]
roots = st.sampled_from(ROOTS)
maybe_roots = st.one_of(st.none(), roots)
slots = st.integers(0, 40)
epochs = st.integers(0, 12)
keys = st.sampled_from(KEYS)


def document(entries: dict[bytes, Recorded]) -> bytes:
    return eip3076_document(entries, GENESIS)


files = st.builds(
    Recorded,
    blocks=st.lists(st.builds(Block, slots, maybe_roots), max_size=3),
    attestations=st.lists(
        st.builds(
            lambda source, span, root: Attestation(source, source + span, root),
            epochs,
            st.integers(0, 3),
            maybe_roots,
        ),
        max_size=3,
    ),
)


class StoreMachine(RuleBasedStateMachine):
    """One data directory under a power-loss model, and the model of every key."""

    def __init__(self) -> None:
        super().__init__()
        self.workdir = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.generation = 0
        self.model: dict[bytes, Protection] = {}
        self.strategy = Strategy.COMPLETE
        self.store: Store | None = None
        self.fileops: PowerLossFileOps | None = None

    @initialize(strategy=st.sampled_from(list(Strategy)))
    def open_fresh(self, strategy: Strategy) -> None:
        self.strategy = strategy
        directory = self.workdir / "dir-0"
        directory.mkdir()
        self._open(directory)

    def _options(self, fileops: FileOps) -> StoreOptions:
        # No history window: the model keeps every message, so decisions compare exactly.
        return StoreOptions(
            strategy=self.strategy, history_window_epochs=None, segment_bytes=4096, fileops=fileops
        )

    def _open(self, directory: Path) -> None:
        self.fileops = PowerLossFileOps(directory)
        self.store = Store.open_or_create(directory, GENESIS, self._options(self.fileops))

    @property
    def live(self) -> Store:
        assert self.store is not None
        return self.store

    def teardown(self) -> None:
        if self.store is not None and not (self.fileops is not None and self.fileops.crashed.is_set()):
            self.store.close(final_checkpoint=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---------------------------------------------------------------- steps

    @rule(pubkeys=st.lists(keys, min_size=1, max_size=3))
    def register(self, pubkeys: list[Pubkey]) -> None:
        _, _, sequence = self.live.register_validators(pubkeys)
        if sequence:
            self.live.log.wait_durable(sequence)
        for key in pubkeys:
            self.model.setdefault(key, Protection(minimal=self.strategy is Strategy.MINIMAL))

    @rule(key=keys, slot=slots, root=roots)
    def sign_block(self, key: Pubkey, slot: int, root: SigningRoot) -> None:
        decision, sequence = self.live.check_and_record_block(key, slot, root)
        self.live.log.wait_durable(sequence)  # acknowledged only once durable
        expected = self.model[key].sign_block(slot, root) if key in self.model else Reason.VALIDATOR_NOT_REGISTERED
        # The one tolerated difference, a repeat the store cannot prove and refuses, changes neither side: a
        # repeat adds nothing to the model, a refusal nothing to the store (see `disagree`).
        assert not disagree(decision.reason, expected), (key[:1], slot, decision.reason, expected)

    @rule(key=keys, source=epochs, span=st.integers(-1, 3), root=roots)
    def sign_attestation(self, key: Pubkey, source: int, span: int, root: SigningRoot) -> None:
        target = max(source + span, 0)
        [(decision, sequence)] = self.live.check_and_record_attestations([(key, source, target, root)])
        self.live.log.wait_durable(sequence)
        self._judge_attestation(key, source, target, root, decision.reason)

    @rule(votes=st.lists(st.tuples(epochs, st.integers(0, 3), roots), min_size=1, max_size=3))
    def sign_batch(self, votes: list[tuple[int, int, SigningRoot]]) -> None:
        requests = [(KEYS[index], source, source + span, root) for index, (source, span, root) in enumerate(votes)]
        decided = self.live.check_and_record_attestations(requests)
        self.live.log.wait_durable(decided[-1][1])
        for (key, source, target, root), (decision, _) in zip(requests, decided, strict=True):
            self._judge_attestation(key, source, target, root, decision.reason)

    def _judge_attestation(self, key: bytes, source: int, target: int, root: bytes, got: Reason) -> None:
        protection = self.model.get(key)
        expected = (
            protection.sign_attestation(source, target, root)
            if protection is not None
            else Reason.VALIDATOR_NOT_REGISTERED
        )
        # As for blocks: a refused repeat the store cannot prove changes neither side. (Removing the message from
        # the model here, as this once did, made the model forget what was signed, and failed when the repeat was
        # of an imported record rather than a signed one.)
        assert not disagree(got, expected), (key[:1], source, target, got, expected)

    @rule(entries=st.dictionaries(keys, files, min_size=1, max_size=2))
    def import_document(self, entries: dict[bytes, Recorded]) -> None:
        self.live.import_interchange(io.BytesIO(document(entries)))
        for key, file in entries.items():
            self.model.setdefault(key, Protection(minimal=self.strategy is Strategy.MINIMAL)).import_file(file)

    @rule()
    def checkpoint(self) -> None:
        self.live.save_checkpoint(while_serving=False)

    @rule()
    def power_cut_and_reopen(self) -> None:
        assert self.fileops is not None
        self.generation += 1
        destination = self.fileops.crash(self.workdir / f"dir-{self.generation}")
        self.store = None  # a machine that lost power closes nothing
        self._open(destination)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def export_into_a_fresh_directory(self, data: st.DataObject) -> None:
        exported = io.BytesIO()
        self.live.export_interchange(exported)
        fresh_dir = self.workdir / f"fresh-{self.generation}-{data.draw(st.integers(0, 10**6))}"
        fresh = Store.open_or_create(fresh_dir, GENESIS, self._options(FileOps()))
        try:
            fresh.import_interchange(io.BytesIO(exported.getvalue()))
            # An exported key never allows, elsewhere, what the model refuses.
            for key, protection in self.model.items():
                history = fresh._validators.get(key)
                assert history is not None, key[:1]
                for slot, root in block_candidates(*self._grids(key)):
                    if check_block(history, slot, root).allowed:
                        assert protection.block_reason(slot, root).allows, ("export", key[:1], slot)
                for source, target, root in attestation_candidates(*self._grids(key)):
                    if check_attestation(history, source, target, root).allowed:
                        assert protection.attestation_reason(source, target, root).allows, (
                            "export",
                            key[:1],
                            source,
                            target,
                        )
        finally:
            fresh.close(final_checkpoint=False)

    @precondition(lambda self: bool(self.model))
    @rule(min_slot=st.integers(0, 45), min_epoch=st.integers(0, 15))
    def repair_with_bounds(self, min_slot: int, min_epoch: int) -> None:
        self.live.close(final_checkpoint=False)
        directory = self.live.data_dir
        repair_data_dir(directory, min_slot, min_epoch, self._options(FileOps()))
        self._open(directory)
        # Repair raises every key's floors: blocks need slot > S, attestations source >= E and target > E.
        for protection in self.model.values():
            protection.raise_floors(min_slot, min_epoch, min_epoch)

    # ---------------------------------------------------------------- the invariant

    def _grids(self, key: bytes) -> tuple[Recorded, ...]:
        protection = self.model[key]
        history = self.live._validators.get(key)
        own = (recorded_from(history),) if history is not None else ()
        return (*protection.files, protection.signed, *own)

    @invariant()
    def decides_like_the_model(self) -> None:
        if self.store is None:
            return
        for key in KEYS:
            history = self.live._validators.get(key)
            protection = self.model.get(key)
            if protection is None:
                assert history is None, f"{key[:1]!r} registered in the store only"
                continue
            assert history is not None, f"{key[:1]!r} lost its registration"
            for slot, root in block_candidates(*self._grids(key)):
                got, expected = check_block(history, slot, root).reason, protection.block_reason(slot, root)
                assert not disagree(got, expected), ("block", key[:1], slot, root[:1], got, expected)
            for source, target, root in attestation_candidates(*self._grids(key)):
                got = check_attestation(history, source, target, root).reason
                expected = protection.attestation_reason(source, target, root)
                assert not disagree(got, expected), (
                    "attestation",
                    key[:1],
                    source,
                    target,
                    root[:1],
                    got,
                    expected,
                )


StoreMachine.TestCase.settings = settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_store_agrees_with_the_model = StoreMachine.TestCase
