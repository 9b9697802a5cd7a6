"""Benchmarks: each writes ``bench/results/<name>.json`` and prints one JSON line."""
