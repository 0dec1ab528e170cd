"""One-off probes behind design decisions of batchshaping.inference (benchmarks/README.md cites them).
Run from the repository root, e.g. ``python -m benchmarks.probes.profile_block 14``."""
