"""Benchmarks, reports and the demo. Imported by the command line only, never by the core."""
