"""Speed measurements (not tests); see benchmarks/README.md. Run each script from the repository root as a
module, e.g. ``python -m benchmarks.latency --quick``."""
