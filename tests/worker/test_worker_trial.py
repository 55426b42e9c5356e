"""The typed trial: read once from a real server's claim answer, every value the server's own,
and a clear error for an answer the worker cannot run."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.scripted import API, ScriptedWorker
from tests.servers import Server, digits_spec
from worker.data import DataSpec
from worker.engine import Caches
from worker.models import ModelSpec
from worker.runner import Runner, WorkerConfig, WorkerStopped
from worker.trial import (
    BadClaim,
    Hyperparameters,
    Objective,
    Resume,
    Training,
    Trial,
    TrialJob,
)

# Every value differs from the spec's default, so a default kept on the worker would show.
SPEC = digits_spec(
    "typed",
    model={"arch": "mobilenet_v3_small", "weights": None, "freeze_backbone": True},
    data={"kind": "digits", "image_size": 20, "batch_size": 48, "val_fraction": 0.3,
          "classes": [3, 1], "augment": False, "on_bad_image": "skip"},
    training={"epochs": 7, "seed": 11, "compile": True, "checkpoint_every": 2,
              "norm_weight_decay": None},
    objective={"metric": "val_accuracy", "epoch": "best"},
    baseline={"lr": 0.05, "momentum": 0.8, "step_size": 3, "gamma": 0.5, "warmup_epochs": 1,
              "weight_decay": 0.001, "nesterov": True, "head_lr_mult": 10.0,
              "label_smoothing": 0.1},
    search_space={"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
    sampler={"name": "random", "seed": 1},
)  # fmt: skip


def _claim(http: httpx.Client, study: str, worker_id: str = "typed-w") -> dict[str, Any]:
    """The claim answer of a trial of `study` (a TestClient is an httpx.Client too)."""
    return ScriptedWorker(http, worker_id, study).next_trial().body


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The real app on a SQLite file, in this process."""
    folder = tmp_path_factory.mktemp("trial-app")
    settings = Settings(storage=f"sqlite:///{folder / 'hpsearch.db'}", data_dir=folder,
                        heartbeat_interval=7)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        for spec in (SPEC, {**SPEC, "name": "typed-default-batch", "baseline": False}):
            assert client.post(f"{API}/studies", json=spec).status_code == 201, spec["name"]
        yield client


@pytest.fixture(scope="module")
def answers(app: TestClient) -> list[dict[str, Any]]:
    """The baseline's claim answer and a sampled trial's."""
    return [_claim(app, "typed"), _claim(app, "typed")]


def test_a_claim_answer_reads_into_the_trial_its_spec_asked_for(answers) -> None:
    baseline, sampled = (Trial.from_claim(a) for a in answers)
    assert baseline == Trial(
        trial_id=answers[0]["trial_id"],
        study="typed",
        number=0,
        is_baseline=True,
        heartbeat_interval=7.0,
        resume=None,
        job=TrialJob(
            model=ModelSpec("mobilenet_v3_small", None, None, True),
            data=DataSpec("digits", 20, 23, "bilinear", 0.3, None, (1, 3), "none", "skip"),
            training=Training(epochs=7, checkpoint_every=2, compile=True, norm_weight_decay=None),
            hparams=Hyperparameters(
                lr=0.05,
                momentum=0.8,
                step_size=3,
                gamma=0.5,
                warmup_epochs=1,
                weight_decay=0.001,
                nesterov=True,
                batch_size=48,
                head_lr_mult=10.0,
                label_smoothing=0.1,
            ),  # fmt: skip
            seed=11,
            objective=Objective(metric="val_accuracy", epoch="best"),
        ),
    )
    # a sampled trial trains with the server's config: the sampled lr, the recipe for the rest
    assert (sampled.number, sampled.is_baseline) == (1, False)
    assert dataclasses.asdict(sampled.job.hparams) == answers[1]["config"]
    assert sampled.job.hparams.lr == answers[1]["params"]["lr"] != 0.05
    assert sampled.label == "trial 1 of typed"


def test_the_batch_size_is_the_one_the_server_resolved(app: TestClient) -> None:
    # No baseline: the recipe's batch size is data.batch_size, resolved by the server alone.
    trial = Trial.from_claim(_claim(app, "typed-default-batch"))
    assert trial.job.hparams.batch_size == 48
    assert trial.job.training.epochs == 7


def _paths(answer: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """Every key path the worker reads from an answer."""
    for field in ("trial_id", "study", "number", "is_baseline", "heartbeat_interval", "resume",
                  "seed", "spec", "config"):  # fmt: skip
        yield (field,)
    for section, cls in (("model", ModelSpec), ("data", DataSpec), ("training", Training)):
        for field in dataclasses.fields(cls):
            yield ("spec", section, field.name)
    for field in dataclasses.fields(Hyperparameters):
        yield ("config", field.name)


def test_every_value_comes_from_the_server(answers) -> None:
    """No default is kept on the worker: without any one value, the answer is refused."""
    answer = answers[0]
    for path in _paths(answer):
        broken = copy.deepcopy(answer)
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        with pytest.raises(BadClaim, match=f"{'.'.join(path)} is missing") as caught:
            Trial.from_claim(broken)
        assert caught.value.trial_id == (None if path == ("trial_id",) else answer["trial_id"])


def _broken(answer: dict[str, Any], change: str) -> Any:
    broken = copy.deepcopy(answer)
    if change == "not an object":
        return [broken]
    if change == "lr a string":
        broken["config"]["lr"] = "fast"
    elif change == "batch_size true":
        broken["config"]["batch_size"] = True
    elif change == "unknown hyperparameter":
        broken["config"]["mixup_alpha"] = 0.2
    elif change == "spec not an object":
        broken["spec"] = "typed"
    elif change == "classes not a list":
        broken["spec"]["data"]["classes"] = 3
    elif change == "a class not an integer":
        broken["spec"]["data"]["classes"] = [1, "two"]
    elif change == "unknown augment policy":
        broken["spec"]["data"]["augment"] = "cutmix"
    elif change == "unknown objective metric":
        broken["spec"]["objective"]["metric"] = "f1"
    elif change == "resume without url":
        broken["resume"] = {"epoch": 2}
    return broken


@pytest.mark.parametrize(("change", "message"), [
    ("not an object", r"the answer must be an object, not \["),
    ("lr a string", "config.lr must be a number, not 'fast'"),
    ("batch_size true", "config.batch_size must be an integer, not True"),
    ("unknown hyperparameter", "config.mixup_alpha: this worker does not know it"),
    ("unknown augment policy", "spec.data: unknown augment policy 'cutmix'"),
    ("unknown objective metric", "spec.objective.metric: this worker does not know 'f1'"),
    ("spec not an object", "spec must be an object, not 'typed'"),
    ("classes not a list", r"spec.data.classes must be a list, not 3"),
    ("a class not an integer", r"spec.data.classes\[1\] must be an integer, not 'two'"),
    ("resume without url", "resume.checkpoint_url is missing"),
])  # fmt: skip
def test_an_answer_the_worker_cannot_run_is_a_clear_error(answers, change, message) -> None:
    with pytest.raises(BadClaim, match=message) as caught:
        Trial.from_claim(_broken(answers[0], change))
    assert str(caught.value).startswith("the server's claim answer is not one this worker can run")


def test_what_the_worker_does_not_read_is_ignored(answers) -> None:
    """The server may add fields (it only adds): the trial is the same."""
    answer = copy.deepcopy(answers[0])
    answer["queue_position"] = 3
    answer["spec"]["scheduling"] = {"priority": 2}
    answer["spec"]["data"]["new_option"] = True
    answer["resume"] = {"epoch": 1, "checkpoint_url": "/c", "size": 10}
    trial = Trial.from_claim(answer)
    assert trial.resume == Resume(epoch=1, checkpoint_url="/c")
    assert trial.job == Trial.from_claim(answers[0]).job


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_runner_hands_back_a_trial_it_cannot_read_and_stops(server: Server, api) -> None:
    spec = digits_spec("unreadable", n_trials=2, baseline=False)
    assert api.post(f"{API}/studies", json=spec).status_code == 201
    answer = _claim(api, "unreadable", worker_id="old-worker")  # its messages name it
    answer["config"]["mixup_alpha"] = 0.2  # a hyperparameter of a newer server
    config = WorkerConfig(server=server.url, token=None, worker_id="old-worker", host="h",
                          device="cpu")  # fmt: skip
    runner = Runner(config, Caches(), threading.Event())
    with pytest.raises(WorkerStopped, match="mixup_alpha"):
        runner.run_trial(answer)
    shown = {t["trial_id"]: t for t in api.get(f"{API}/studies/unreadable/trials").json()}
    handed_back = shown[answer["trial_id"]]
    assert handed_back["state"] == "fail"
    assert "old-worker" in handed_back["fail_reason"]
    assert "mixup_alpha" in handed_back["fail_reason"]
    retry = [t for t in shown.values() if t["retry_of"] == answer["number"]]
    assert [t["state"] for t in retry] == ["waiting"]  # a worker that can read it gets it next


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_the_runner_completes_an_epoch_best_study_with_its_best_epoch(server: Server, api) -> None:
    """A real fine-tune through the runner: the trial's value is its best epoch's accuracy and
    that epoch is named (which weights the engine keeps: test_worker_engine)."""
    spec = digits_spec(
        "best-epoch-runner", n_trials=1, baseline=False, sampler={"name": "random", "seed": 0},
        model={"arch": "mobilenet_v3_small", "weights": None, "freeze_backbone": True},
        data={"kind": "digits", "image_size": 16, "batch_size": 32, "classes": [0, 1]},
        training={"epochs": 4, "seed": 0},
        objective={"metric": "val_accuracy", "epoch": "best"},
        search_space={"lr": {"type": "categorical", "choices": [2.0]}},
    )  # fmt: skip
    assert api.post(f"{API}/studies", json=spec).status_code == 201
    config = WorkerConfig(server=server.url, token=None, worker_id="best-w", host="h",
                          device="cpu")  # fmt: skip
    runner = Runner(config, Caches(), threading.Event())
    assert runner.run_trial(_claim(api, "best-epoch-runner", worker_id="best-w")) == "completed"
    (trial,) = api.get(f"{API}/studies/best-epoch-runner/trials").json()
    curve = {int(epoch): value for epoch, value in trial["intermediate_values"].items()}
    best_epoch = max(curve, key=lambda e: (curve[e], -e))
    assert trial["state"] == "complete" and len(curve) == 4
    assert (trial["value"], trial["value_epoch"]) == (curve[best_epoch], best_epoch)
    assert trial["val_accuracy"] == curve[best_epoch] and trial["val_loss"] > 0
    assert trial["has_weights"]
