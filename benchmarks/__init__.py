"""hal9999 benchmarks: ``python -m benchmarks`` (see docs/benchmarks.md). Not part of CI."""
