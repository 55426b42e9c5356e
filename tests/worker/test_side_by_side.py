"""Trials side by side in one process (--trials-per-gpu) stay reproducible.

For models without dropout: dropout draws from torch's process-wide generator, which threads
share (PyTorch has no per-thread default generator)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torchvision

from worker.engine import Caches, fine_tune

pytestmark = pytest.mark.slow  # real training


def _losses(job, caches: Caches) -> list[float]:
    losses: list[float] = []
    fine_tune(job, caches, lambda report: losses.append(report.val_loss) or False)
    return losses


@pytest.mark.parametrize("pretrained", [False, True])
def test_threads_sharing_caches_get_the_serial_result(
    make_job, tmp_path: Path, pretrained: bool
) -> None:
    model = {"arch": "shufflenet_v2_x0_5"}  # no dropout (mobilenet's classifier has some)
    if pretrained:  # the threads race for one template; the serial run builds its own model
        torch.manual_seed(3)
        torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), tmp_path / "w.pt")
        model["weights_path"] = str(tmp_path / "w.pt")
    job = make_job(seed=5, model=model, training={"epochs": 2, "checkpoint_every": 0})
    serial = _losses(job, Caches(templates=None))
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
    assert shared.templates is not None and len(shared.templates) == int(pretrained)
