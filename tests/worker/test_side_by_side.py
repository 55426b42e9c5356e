"""Trials side by side in one process (--trials-per-gpu) stay reproducible.

For models without dropout: dropout draws from torch's process-wide generator, which threads
share (PyTorch has no per-thread default generator)."""

from __future__ import annotations

import threading

from worker.engine import Caches, fine_tune


def _losses(job, caches: Caches) -> list[float]:
    losses: list[float] = []
    fine_tune(job, caches, lambda report: losses.append(report.val_loss) or False)
    return losses


def test_threads_sharing_caches_get_the_serial_result(make_job) -> None:
    job = make_job(
        seed=5,
        model={"arch": "resnet18"},  # no dropout (mobilenet's classifier has some)
        training={"epochs": 2, "checkpoint_every": 0},
    )
    serial = _losses(job, Caches())
    shared = Caches()  # one process's caches, as the supervisor shares them between threads
    results: list[list[float]] = [[], [], []]

    def run(i: int) -> None:
        results[i] = _losses(job, shared)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == serial for r in results), (serial, results)
