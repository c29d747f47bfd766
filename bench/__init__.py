"""Benchmarks and hardware checks (commands, not tests)."""
