"""Real external programs the tests drive (never mocks), and what to do when one is missing.

Outside CI a missing program skips the test with a message naming it; in CI (the `CI` environment variable set)
the test fails instead, so a CI image without it can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_binary"]


def require_binary(name: str, package: str) -> str:
    """The path of `name` on PATH (or /usr/bin, /usr/sbin); skips outside CI, fails in CI, when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is not None:
        return path
    message = f"{name} not found: install the Debian package {package} (scripts/setup-system does, as root)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run this test")
    pytest.skip(message)
