"""Benchmarks: accuracy against published results and peers, speed. Numbers go to a report."""
