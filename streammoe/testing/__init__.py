"""Helpers for tests, benchmarks and the demo: the embedded broker (needs the demo extra), synthetic machines."""
