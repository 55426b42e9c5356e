"""The worker's preflight: what it finds in a good study, and whose fault each bad one is (the
spec's: every worker would fail; this machine's: another worker may have what it lacks)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.scripted import API
from tests.servers import Server, digits_spec
from tests.worker.conftest import JobFactory
from tests.worker.test_worker_folders import make_split, write_image
from worker.data import DataCache
from worker.engine import Caches
from worker.models import WeightsCache
from worker.preflight import PreflightFault, run_preflight
from worker.runner import Runner, WorkerConfig


def folder_data(root: Path, **kw: object) -> dict[str, object]:
    return {"kind": "imagefolder", "root": str(root), "classes": None, **kw}


def fault(job_caches: tuple, device: str = "cpu") -> PreflightFault:
    with pytest.raises(PreflightFault) as caught:
        run_preflight(*job_caches, device)
    return caught.value


def test_a_good_study_passes_with_its_data(make_job: JobFactory, caches: Caches) -> None:
    found = run_preflight(make_job(), caches, "cpu")
    assert found["classes"] == ["0", "1"]
    assert found["train_images"] > 0 and found["val_images"] > 0
    assert (found["test_images"], found["skipped_images"]) == (0, 0)


def test_an_image_folder_with_test_and_skipped_files(make_job: JobFactory, tmp_path: Path) -> None:
    make_split(tmp_path / "train", n=3)
    make_split(tmp_path / "val", n=2)
    make_split(tmp_path / "test", n=1)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    job = make_job(data=folder_data(tmp_path, on_bad_image="skip"))
    found = run_preflight(job, Caches(weights=WeightsCache(allow_download=False)), "cpu")
    assert found == {
        "classes": ["cat", "dog"],
        "train_images": 6,
        "val_images": 4,
        "test_images": 2,
        "skipped_images": 1,
    }


def test_one_class_is_the_specs_fault_and_names_the_folder(
    make_job: JobFactory, tmp_path: Path
) -> None:
    make_split(tmp_path / "train", classes={"cat": (200, 30, 30)})
    caches = Caches(data=DataCache(), weights=WeightsCache(allow_download=False))
    job = make_job(data=folder_data(tmp_path))
    first = fault((job, caches))
    assert first.fault == "spec"
    assert "holds 1 class folder(s) ['cat']" in first.error and str(tmp_path) in first.error
    # fixed, and run again by the same worker: the remembered failure does not stick
    write_image(tmp_path / "train" / "dog" / "0.png", (30, 200, 30))
    write_image(tmp_path / "train" / "dog" / "1.png", (30, 200, 30))
    assert run_preflight(job, caches, "cpu")["classes"] == ["cat", "dog"]


def test_a_corrupt_file_is_the_specs_fault(make_job: JobFactory, tmp_path: Path) -> None:
    make_split(tmp_path / "train")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    found = fault((make_job(data=folder_data(tmp_path)), Caches()))
    assert found.fault == "spec" and "broken.png" in found.error


def test_an_unknown_architecture_is_the_specs_fault(make_job: JobFactory, caches: Caches) -> None:
    found = fault((make_job(model={"arch": "resnet_nonexistent"}), caches))
    assert found.fault == "spec" and "resnet_nonexistent" in found.error


def test_a_missing_data_root_is_this_workers_fault(make_job: JobFactory, tmp_path: Path) -> None:
    found = fault((make_job(data=folder_data(tmp_path / "absent")), Caches()))
    assert found.fault == "worker" and "is not a directory on this machine" in found.error


def test_a_missing_weights_file_is_this_workers_fault(
    make_job: JobFactory, caches: Caches, tmp_path: Path
) -> None:
    job = make_job(model={"weights_path": str(tmp_path / "absent.pth")})
    found = fault((job, caches))
    assert found.fault == "worker" and "absent.pth" in found.error


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_runner_skips_a_study_whose_data_this_machine_lacks(
    server: Server, api, tmp_path: Path
) -> None:
    """The runner's side against a real server: no training, the trial handed back, the study
    excluded from this worker's next claims and shown in GET /workers."""
    absent = tmp_path / "absent"
    spec = digits_spec(
        "elsewhere", n_trials=2, data={"kind": "imagefolder", "root": str(absent), "image_size": 16}
    )
    assert api.post(f"{API}/studies", json=spec).status_code == 201
    config = WorkerConfig(server=server.url, token=None, worker_id="lacking", host="h",
                          device="cpu")  # fmt: skip
    runner = Runner(config, Caches(), threading.Event())
    answer = runner.client.claim("lacking", None, "cpu", "h")
    assert answer is not None and answer["preflight"] is True
    assert runner.run_trial(answer) == "skipped"
    assert "is not a directory on this machine" in runner.skipped["elsewhere"]
    (trial, retry) = api.get(f"{API}/studies/elsewhere/trials").json()
    assert (trial["state"], retry["state"]) == ("fail", "waiting")
    (worker,) = api.get(f"{API}/workers").json()
    assert worker["skipped_studies"] == runner.skipped
    assert runner.client.claim("lacking", None, "cpu", "h", exclude=["elsewhere"]) is None
    assert api.get(f"{API}/studies/elsewhere").json()["state"] == "running"
