"""Benchmarks: one script per question, each run as `python -m bench.<name>` from the repository
root; results and commands are kept in bench/RESULTS.md. Benchmarks are not tests."""
