"""The test folder: never used for selection; a completed trial's kept weights (the ones it
uploads) are evaluated on it as validation is, and the result goes with its completion."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
import torch

from tests.scripted import API
from tests.servers import Server, digits_spec
from tests.worker.conftest import JobFactory
from tests.worker.test_worker_folders import make_split
from worker.data import ImageBatches, load_data, load_test_split
from worker.engine import Caches, Runtime, evaluate, evaluate_on_test, fine_tune
from worker.models import WeightsCache, build_network, normalization
from worker.runner import Runner, WorkerConfig
from worker.trial import Trial, TrialJob


def image_folders(root: Path, test: bool = True) -> Path:
    make_split(root / "train", n=4)
    make_split(root / "val", n=2)
    if test:
        make_split(root / "test", n=3)
    return root


def folder_data(root: Path) -> dict[str, object]:
    return {"kind": "imagefolder", "root": str(root), "classes": None}


def evaluate_weights(job: TrialJob, weights: bytes) -> tuple[float, float]:
    """Independently of the worker's caches: the weights on a freshly decoded test split."""
    network = build_network(
        job.model,
        num_classes=2,
        image_size=job.data.image_size,
        seed=job.seed,
        cache=WeightsCache(allow_download=False),
    )
    network.module.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    test = load_test_split(job.data)
    assert test is not None
    mean, std = normalization(job.model)
    images = ImageBatches(
        load_data(job.data),
        batch_size=1,
        augment="none",
        seed=0,
        device=torch.device("cpu"),
        mean=mean,
        std=std,
    )
    return evaluate(
        network.module,
        images.ordered_batches(test, len(test)),
        epoch=0,
        rt=Runtime(torch.device("cpu")),
    )


@pytest.mark.parametrize(("kept", "frozen"), [("last", False), ("best", False), ("last", True)])
def test_test_metrics_are_the_kept_weights_on_the_test_split(
    make_job: JobFactory, tmp_path: Path, kept: str, frozen: bool
) -> None:
    """Frozen: the head trained on cached features; the whole model is evaluated on images."""
    job = make_job(
        data=folder_data(image_folders(tmp_path)),
        training={"epochs": 3},
        objective={"metric": "val_accuracy", "epoch": kept},
        model={"freeze_backbone": frozen},
    )
    caches = Caches(weights=WeightsCache(allow_download=False))
    outcome = fine_tune(job, caches, lambda report: False)
    uploaded = outcome.weights_bytes()
    if kept == "best":  # this run's best epoch is not its last: the kept weights are older
        assert outcome.epoch == 0 and outcome.kept is not None
    test = evaluate_on_test(job, caches, outcome)
    # on the CPU, in one batch (the test split is 6 images), bit for bit
    assert test == evaluate_weights(job, uploaded)
    assert outcome.weights_bytes() == uploaded  # evaluating changed nothing that is uploaded


def test_no_test_folder_gives_no_test_metrics(make_job: JobFactory, tmp_path: Path) -> None:
    job = make_job(data=folder_data(image_folders(tmp_path, test=False)), training={"epochs": 1})
    caches = Caches(weights=WeightsCache(allow_download=False))
    outcome = fine_tune(job, caches, lambda report: False)
    assert evaluate_on_test(job, caches, outcome) is None


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_runner_completes_with_test_metrics_and_best_shows_them(
    server: Server, api, tmp_path: Path
) -> None:
    """Against a real server: the runner sends the test metrics of the weights it uploads;
    a data set without a test folder sends none (null in best)."""
    for name, test in (("with-test", True), ("without-test", False)):
        root = image_folders(tmp_path / name, test=test)
        spec = digits_spec(
            name,
            n_trials=1,
            model={"arch": "mobilenet_v3_small", "weights": None},
            training={"epochs": 2, "seed": 0},
            data={"kind": "imagefolder", "root": str(root), "image_size": 16, "batch_size": 4},
        )
        assert api.post(f"{API}/studies", json=spec).status_code == 201, name
        config = WorkerConfig(
            server=server.url, token=None, worker_id=f"w-{name}", host="h", device="cpu", study=name
        )
        runner = Runner(
            config, Caches(weights=WeightsCache(allow_download=False)), threading.Event()
        )
        answer = runner.client.claim(config.worker_id, name, "cpu", "h")
        assert answer is not None
        assert runner.run_trial(answer) == "completed"
        (best,) = api.get(f"{API}/studies/{name}/best", params={"k": 1}).json()["trials"]
        if not test:
            assert (best["test_loss"], best["test_accuracy"]) == (None, None)
            continue
        weights = api.get(f"{API}/studies/{name}/trials/{best['number']}/weights")
        assert weights.status_code == 200
        expected = evaluate_weights(Trial.from_claim(answer).job, weights.content)
        assert (best["test_loss"], best["test_accuracy"]) == pytest.approx(expected, 1e-6)
        (listed,) = api.get(f"{API}/studies/{name}/trials").json()
        assert "test_loss" not in listed
