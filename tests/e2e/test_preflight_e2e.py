"""End to end: a real `hpsearch worker` runs a study's preflight on an image folder the test
makes. With one class the study goes into error, naming the folder, and no trial trains; once
the folder is fixed, `resume` runs the preflight again and the study trains and shows its
data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.servers import REPO, digits_spec
from tests.workers import start_worker, worker_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True),
]


def write_class(folder: Path, color: tuple[int, int, int], n: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(color))
    for i in range(n):
        pixels = (np.array(color) + rng.integers(0, 30, (20, 20, 3))).clip(0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def run_worker(url: str, log: Path, name: str) -> str:
    worker = start_worker(url, log, "--exit-when-idle", "--study", name)
    assert worker.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def status(url: str, name: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "status", "--server", url, name],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_one_class_puts_the_study_in_error_until_fixed_and_resumed(
    server, api: httpx.Client, tmp_path: Path
) -> None:
    root = tmp_path / "pets"
    write_class(root / "train" / "cat", (200, 30, 30))
    write_class(root / "val" / "cat", (200, 30, 30), n=2)
    spec = digits_spec(
        "pets",
        data={"kind": "imagefolder", "root": str(root), "image_size": 16, "batch_size": 4},
        training={"epochs": 1, "seed": 0},
        n_trials=1,
    )
    assert api.post("/api/v1/studies", json=spec).status_code == 201

    log = run_worker(server.url, tmp_path / "worker.log", "pets")
    study = api.get("/api/v1/studies/pets").json()
    assert study["state"] == "error", log[-3000:]
    assert "holds 1 class folder(s) ['cat']" in study["error"]
    assert str(root / "train") in study["error"]
    (trial,) = api.get("/api/v1/studies/pets/trials").json()
    assert trial["state"] == "fail" and trial["epochs"] == 0  # nothing trained
    shown = status(server.url, "pets")
    assert "study pets: error" in shown and "holds 1 class folder(s)" in shown.splitlines()[0]

    write_class(root / "train" / "dog", (30, 200, 30))
    write_class(root / "val" / "dog", (30, 200, 30), n=2)
    assert api.post("/api/v1/studies/pets/resume").json()["state"] == "running"
    log = run_worker(server.url, tmp_path / "worker2.log", "pets")
    study = api.get("/api/v1/studies/pets").json()
    assert study["state"] == "done", log[-3000:]
    assert study["data"] == {
        "classes": ["cat", "dog"],
        "train_images": 8,
        "val_images": 4,
        "test_images": 0,
        "skipped_images": 0,
    }
    assert "data: 2 classes (cat, dog); 8 train / 4 val / 0 test images" in status(
        server.url, "pets"
    )
