"""Helpers shared by the test suites (real peers, free ports, sample data)."""
