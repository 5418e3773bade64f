"""Run one fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.run TARGET [libFuzzer args] [CORPUS...]``.

``scripts/fuzz TARGET [SECONDS]`` is the way in for humans; ``tests/fuzz/test_fuzz.py`` runs each target briefly
in CI. The sidecar and interchange packages are instrumented for coverage as they are imported; a crash, a hang
(``-timeout``) or memory beyond ``-rss_limit_mb`` stops the run with the input saved (``-artifact_prefix``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["sidecar", "interchange"]):
    from tests.fuzz import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(
            f"usage: python -m tests.fuzz.run {{{','.join(targets.TARGETS)}}} [libFuzzer options] [corpus...]"
        )
    target = targets.TARGETS[sys.argv[1]]
    targets.quiet_logs()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
