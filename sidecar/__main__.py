"""`python -m sidecar` runs the command line, like the `slashing-sidecar` console script."""

from sidecar.cli import main

raise SystemExit(main())
