"""Storage is the bottom layer: bytes on disk, knowing nothing of slashing.

Every module of ``sidecar.storage`` is parsed (not imported, so a lazy import inside a function counts too) and
may import nothing of ``sidecar`` outside ``sidecar.storage``, except ``sidecar.errors``, the root of the error
tree, which is allowed because it is itself a leaf (checked below).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import sidecar
import sidecar.storage

SIDECAR_DIR = Path(sidecar.__file__).parent
STORAGE_DIR = Path(sidecar.storage.__file__).parent
ALLOWED_OUTSIDE_STORAGE = {"sidecar.errors"}


def imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``; ``from X import name`` yields ``X.name`` as well as ``X``
    (``name`` may be a module), relative imports resolved against ``package``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def is_sidecar(module: str) -> bool:
    return module == "sidecar" or module.startswith("sidecar.")


def allowed(module: str) -> bool:
    if module == "sidecar":
        return True  # `from sidecar import x` is judged by the `sidecar.x` it also yields
    if module == "sidecar.storage" or module.startswith("sidecar.storage."):
        return True
    return any(module == leaf or module.startswith(leaf + ".") for leaf in ALLOWED_OUTSIDE_STORAGE)


STORAGE_MODULES = sorted(STORAGE_DIR.glob("*.py"))


def test_storage_modules_are_found() -> None:
    names = {path.stem for path in STORAGE_MODULES}
    assert {"__init__", "framing", "segments", "reader", "repair", "writer", "checkpoint"} <= names


@pytest.mark.parametrize("path", STORAGE_MODULES, ids=lambda path: path.name)
def test_storage_imports_nothing_above_it(path: Path) -> None:
    offending = [
        f"{path.name}:{line} imports {module}"
        for line, module in imported_modules(path, "sidecar.storage")
        if is_sidecar(module) and not allowed(module)
    ]
    assert offending == []


@pytest.mark.parametrize("leaf", sorted(ALLOWED_OUTSIDE_STORAGE))
def test_what_storage_may_import_is_a_leaf(leaf: str) -> None:
    path = SIDECAR_DIR / (leaf.removeprefix("sidecar.").replace(".", "/") + ".py")
    imports = [module for _, module in imported_modules(path, "sidecar") if is_sidecar(module)]
    assert imports == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "from sidecar.storage.framing import MAX_PAYLOAD_SIZE\n"
        "from sidecar import history\n"
        "def lazy():\n"
        "    from ..rules import Reason\n"
        "    import sidecar.domain\n"
    )
    found = [module_ for _, module_ in imported_modules(module, "sidecar.storage") if not allowed(module_)]
    assert [name for name in found if is_sidecar(name)] == [
        "sidecar.history",
        "sidecar.rules",
        "sidecar.rules.Reason",
        "sidecar.domain",
    ]
