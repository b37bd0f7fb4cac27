"""Benchmarks run on this machine (`jisr bench …`)."""
