"""Fixtures shared by the tests and scripts/bench-store; never installed."""
