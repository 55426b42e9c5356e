"""The `hpsearch` command line: serve, worker, submit, status, watch, best, workers, demo."""
