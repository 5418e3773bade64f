"""``python -m benchmarks [--quick]``: see ``benchmarks/README.md``."""

from benchmarks.harness import main

if __name__ == "__main__":  # client processes are spawned and re-import the main module: run only once
    raise SystemExit(main())
