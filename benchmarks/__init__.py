"""Benchmark harness for the slashing-protection sidecar.

Run everything with ``python -m benchmarks`` (``--quick`` for a one-minute pass). Every figure is printed next
to a baseline measured in the same run on the same machine: absolute times on a shared machine are noise, the
ratios are the result. See ``benchmarks/README.md`` for what each figure means.
"""
