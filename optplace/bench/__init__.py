"""Benchmarks that print figures (fidelity, speed, surrogate, solver)."""
