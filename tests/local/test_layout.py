"""The data directory's layout and identity file: every refusal names the directory or file, and nothing is
guessed (a damaged or unknown identity, a log without one, another chain's root)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sidecar.errors import DataDirError, GenesisRootMismatchError
from sidecar.local.layout import (
    IDENTITY_FILE,
    DataDirLayout,
    open_or_create_identity,
    read_identity,
)
from sidecar.storage import FileOps

ROOT = bytes(range(32))
OTHER_ROOT = bytes([7]) * 32


@pytest.fixture
def layout(tmp_path: Path) -> DataDirLayout:
    (tmp_path / "data").mkdir()
    return DataDirLayout(tmp_path / "data")


def write_identity(layout: DataDirLayout, document: object) -> None:
    layout.identity_file.write_text(json.dumps(document))


def test_every_path_is_named_under_the_directory(layout: DataDirLayout) -> None:
    root = layout.root
    assert layout.identity_file == root / IDENTITY_FILE == root / "IDENTITY.json"
    assert layout.lock_file == root / "LOCK"
    assert layout.log_dir == root / "log"
    assert layout.checkpoint_dir == root / "checkpoints"
    assert layout.archive_dir == root / "archive"
    assert layout.record_dirs == (root / "archive", root / "log")
    when = time.struct_time((2024, 5, 6, 7, 8, 9, 0, 127, 0))
    assert layout.damaged_dir(when) == root / "damaged-20240506T070809Z"
    assert not any(root.iterdir()), "naming a path creates nothing"


def test_a_new_directory_gets_its_identity_and_reads_it_back(layout: DataDirLayout) -> None:
    assert open_or_create_identity(layout, ROOT, FileOps()) == ROOT
    assert json.loads(layout.identity_file.read_text()) == {
        "format": 1,
        "genesis_validators_root": "0x" + ROOT.hex(),
    }
    assert read_identity(layout, FileOps()) == ROOT
    assert open_or_create_identity(layout, ROOT, FileOps()) == ROOT


def test_a_new_directory_without_a_root_is_refused(layout: DataDirLayout) -> None:
    with pytest.raises(DataDirError, match="is a new data directory"):
        read_identity(layout, FileOps())
    assert not layout.identity_file.exists()


def test_another_chains_root_is_refused(layout: DataDirLayout) -> None:
    open_or_create_identity(layout, ROOT, FileOps())
    with pytest.raises(GenesisRootMismatchError, match=f"created for genesis validators root 0x{ROOT.hex()}"):
        open_or_create_identity(layout, OTHER_ROOT, FileOps())


@pytest.mark.parametrize("sub", ["log", "checkpoints"])
def test_state_without_an_identity_file_is_refused_even_with_a_root(layout: DataDirLayout, sub: str) -> None:
    (layout.root / sub).mkdir()
    (layout.root / sub / "anything").write_bytes(b"x")
    with pytest.raises(DataDirError, match="refusing to guess"):
        open_or_create_identity(layout, ROOT, FileOps())
    assert not layout.identity_file.exists()


def test_empty_state_folders_do_not_count_as_state(layout: DataDirLayout) -> None:
    layout.log_dir.mkdir()
    layout.checkpoint_dir.mkdir()
    assert not layout.holds_state(FileOps())
    assert open_or_create_identity(layout, ROOT, FileOps()) == ROOT


def test_an_unknown_format_is_refused(layout: DataDirLayout) -> None:
    write_identity(layout, {"format": 2, "genesis_validators_root": "0x" + ROOT.hex()})
    with pytest.raises(DataDirError, match="unknown identity format 2"):
        read_identity(layout, FileOps())


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("not json", "is damaged"),
        (json.dumps([1, 2]), "not a JSON object"),
        (json.dumps({"format": 1}), "is damaged"),
        (json.dumps({"format": 1, "genesis_validators_root": ROOT.hex()}), "0x-prefixed 32-byte hex"),
        (json.dumps({"format": 1, "genesis_validators_root": "0x" + ROOT.hex()[:-2]}), "32-byte hex"),
        (json.dumps({"format": 1, "genesis_validators_root": "0xzz"}), "is damaged"),
    ],
)
def test_a_damaged_identity_file_is_refused_naming_it(layout: DataDirLayout, content: str, detail: str) -> None:
    layout.identity_file.write_text(content)
    with pytest.raises(DataDirError, match=detail) as raised:
        open_or_create_identity(layout, ROOT, FileOps())
    assert str(layout.identity_file) in str(raised.value)
    assert layout.identity_file.read_text() == content, "a damaged identity is never rewritten"
