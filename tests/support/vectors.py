"""Access to the EIP-3076 conformance vectors in ../shared (beside the repository), when present."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_DIR = Path(__file__).resolve().parents[3] / "shared" / "interchange-tests"


def vector_files() -> list[Path]:
    if not VECTORS_DIR.is_dir():
        return []
    return sorted(p for p in VECTORS_DIR.glob("*.json") if not p.name.startswith("SCHEMA"))


def vector_params() -> list[Any]:
    files = vector_files()
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"conformance vectors absent: {VECTORS_DIR}"))]
    return [pytest.param(path, id=path.stem) for path in files]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text[2:])
