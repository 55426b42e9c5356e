"""Sharing one service: claims without a study go by priority, then by a weighted fair share of
the running trials, within max_concurrent_trials and the labels a study requires; PATCH changes
a study's budget and scheduling. Every claim here is held running (never completed) unless the
test says otherwise, so the counts are the scheduler's decisions.

Each test gets an app of its own over a fresh database (SQLite and PostgreSQL): a claim without
a study sees every study in the database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service.app import create_app
from service.settings import Settings
from tests.scripted import API, ScriptedWorker, create_study, summary
from tests.service.conftest import StorageMaker


@pytest.fixture
def storage(new_storage: StorageMaker) -> str:
    return new_storage()


@pytest.fixture
def http(storage: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(storage=storage, data_dir=tmp_path / "data", lease_grace=600))
    with TestClient(app) as client:
        yield client


def scheduled(http: TestClient, name: str, n_trials: int = 20, **scheduling: Any) -> None:
    create_study(
        http, name, n_trials=n_trials, scheduling=scheduling, sampler={"name": "random", "seed": 0}
    )


def claim_studies(http: TestClient, n: int, **body: Any) -> Counter[str]:
    """`n` claims without a study, held running; how many went to each study (None: 204)."""
    worker = ScriptedWorker(http, "pool")
    got: Counter[str] = Counter()
    for _ in range(n):
        trial = worker.claim(**body)
        got[trial.body["study"] if trial else None] += 1
    return got


def test_weights_one_and_three_share_eight_running_trials_two_to_six(http: TestClient) -> None:
    scheduled(http, "light", weight=1)
    scheduled(http, "heavy", weight=3)
    assert claim_studies(http, 8) == {"light": 2, "heavy": 6}
    running = {s["name"]: s["counts"]["running"] for s in http.get(f"{API}/studies").json()}
    assert running == {"light": 2, "heavy": 6}


def test_equal_weights_alternate_oldest_first(http: TestClient) -> None:
    scheduled(http, "first")
    scheduled(http, "second")
    worker = ScriptedWorker(http, "pool")
    order = [worker.claim().body["study"] for _ in range(4)]  # type: ignore[union-attr]
    assert order == ["first", "second", "first", "second"]


def test_the_highest_priority_takes_every_trial_it_can(http: TestClient) -> None:
    scheduled(http, "normal", weight=100)
    scheduled(http, "urgent", n_trials=3, priority=5)
    # urgent's whole budget first, whatever the weights; then the lower priority.
    assert claim_studies(http, 5) == {"urgent": 3, "normal": 2}


def test_max_concurrent_trials_caps_a_study(http: TestClient) -> None:
    scheduled(http, "capped", weight=10, max_concurrent_trials=2)
    scheduled(http, "open")
    assert claim_studies(http, 5) == {"capped": 2, "open": 3}
    # Asked for by name, it still may not run a third.
    capped = ScriptedWorker(http, "by-name", "capped")
    assert capped.claim() is None
    # One of its trials ends: it may run another.
    running = [
        t for t in http.get(f"{API}/studies/capped/trials").json() if t["state"] == "running"
    ]
    assert capped.complete(running[0]["trial_id"], 1.0).status_code == 200
    assert capped.claim() is not None
    assert capped.claim() is None


def test_a_study_requiring_labels_gets_only_workers_that_have_them(http: TestClient) -> None:
    scheduled(http, "h100-only", requires={"gpu": "h100"})
    scheduled(http, "anywhere")
    assert claim_studies(http, 3) == {"anywhere": 3}
    assert claim_studies(http, 1, labels={"gpu": "a100"}) == {"anywhere": 1}
    # Labels the study does not name do not matter; h100-only has the fewest running trials.
    assert claim_studies(http, 2, labels={"gpu": "h100", "pool": "a"}) == {"h100-only": 2}
    by_name = ScriptedWorker(http, "plain", "h100-only")
    assert by_name.claim() is None
    assert by_name.claim(labels={"gpu": "h100"}) is not None


def test_workers_show_their_labels_and_study(http: TestClient) -> None:
    scheduled(http, "labelled")
    worker = ScriptedWorker(http, "gpu-box-0")
    assert worker.claim(labels={"gpu": "h100", "pool": "a"}) is not None
    [row] = http.get(f"{API}/workers").json()
    assert row["labels"] == {"gpu": "h100", "pool": "a"}
    assert row["study"] == "labelled" and row["worker_id"] == "gpu-box-0"


def test_stopped_and_done_studies_get_no_claims(http: TestClient) -> None:
    scheduled(http, "stopped")
    scheduled(http, "small", n_trials=1)
    assert http.post(f"{API}/studies/stopped/stop").status_code == 200
    worker = ScriptedWorker(http, "w")
    trial = worker.claim()
    assert trial is not None and trial.body["study"] == "small"
    assert worker.complete(trial.trial_id, 1.0).status_code == 200
    assert worker.claim() is None
    assert [s["name"] for s in http.get(f"{API}/studies", params={"state": "done"}).json()] == [
        "small"
    ]


# --- PATCH ------------------------------------------------------------------------------------
def test_a_done_study_given_more_trials_runs_again(http: TestClient, storage: str) -> None:
    scheduled(http, "extended", n_trials=2)
    worker = ScriptedWorker(http, "w", "extended")
    for loss in (1.0, 0.5):
        trial = worker.claim()
        assert trial is not None
        assert worker.complete(trial.trial_id, loss).status_code == 200
    assert summary(http, "extended")["state"] == "done"
    assert ScriptedWorker(http, "any").claim() is None

    r = http.patch(f"{API}/studies/extended", json={"n_trials": 4})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "running" and r.json()["n_trials"] == 4
    assert r.json()["spec"]["n_trials"] == 4
    numbers = []
    for _ in range(2):
        trial = ScriptedWorker(http, "any").claim()  # without a study: it is active again
        assert trial is not None and trial.body["study"] == "extended"
        numbers.append(trial.number)
        assert worker.complete(trial.trial_id, 0.9).status_code == 200
    assert numbers == [2, 3]
    assert ScriptedWorker(http, "any").claim() is None
    study = optuna.load_study(study_name="extended", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert study.best_value == 0.5  # the earlier trials are still the study's
    assert summary(http, "extended")["state"] == "done"


def test_lowering_the_budget_below_what_runs_is_409_and_changes_nothing(http: TestClient) -> None:
    scheduled(http, "busy", n_trials=6)
    worker = ScriptedWorker(http, "w", "busy")
    trials = [worker.claim() for _ in range(3)]
    assert worker.complete(trials[0].trial_id, 1.0).status_code == 200  # type: ignore[union-attr]
    r = http.patch(f"{API}/studies/busy", json={"n_trials": 2, "scheduling": {"priority": 3}})
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "n_trials"
    assert "1 finished, 2 running, 0 waiting" in r.json()["detail"]
    after = summary(http, "busy")
    assert after["n_trials"] == 6 and after["priority"] == 0
    # Down to exactly what is finished or running is allowed: no new trial is handed out.
    r = http.patch(f"{API}/studies/busy", json={"n_trials": 3})
    assert r.status_code == 200, r.text
    assert worker.claim() is None


def test_changed_scheduling_changes_the_next_claims(http: TestClient) -> None:
    scheduled(http, "a")
    scheduled(http, "b")
    r = http.patch(f"{API}/studies/b", json={"scheduling": {"priority": 2, "weight": 0.5}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["priority"], body["weight"]) == (2, 0.5)
    # The fields not given stay.
    assert body["spec"]["scheduling"] == {
        "priority": 2,
        "weight": 0.5,
        "max_concurrent_trials": None,
        "requires": {},
    }
    assert claim_studies(http, 3) == {"b": 3}
    r = http.patch(f"{API}/studies/b", json={"scheduling": {"max_concurrent_trials": 3}})
    assert r.json()["priority"] == 2
    assert claim_studies(http, 2) == {"a": 2}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scheduling": {"weight": 0}}, "scheduling.weight"),
        ({"scheduling": {"weight": -1.5}}, "scheduling.weight"),
        ({"scheduling": {"priority": "high"}}, "scheduling.priority"),
        ({"scheduling": {"max_concurrent_trials": 0}}, "scheduling.max_concurrent_trials"),
        ({"scheduling": {"requires": {"gpu type": "h100"}}}, "scheduling.requires.gpu type"),
        ({"scheduling": {"requires": {"gpu": 3}}}, "scheduling.requires.gpu"),
        ({"scheduling": {"bogus": 1}}, "scheduling.bogus"),
        ({"n_trials": 0}, "n_trials"),
        ({"name": "other"}, "name"),
    ],
)
def test_an_invalid_change_is_422_naming_the_field(
    http: TestClient, body: dict, field: str
) -> None:
    scheduled(http, "valid")
    r = http.patch(f"{API}/studies/valid", json=body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    after = summary(http, "valid")
    assert after["n_trials"] == 20 and after["spec"]["scheduling"]["weight"] == 1.0


def test_an_invalid_scheduling_in_a_new_spec_is_422(http: TestClient) -> None:
    r = http.post(
        f"{API}/studies",
        json={
            "name": "bad",
            "data": {"kind": "digits"},
            "scheduling": {"weight": 0, "requires": ["gpu"]},
        },
    )
    assert r.status_code == 422, r.text
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"scheduling.weight", "scheduling.requires"} <= fields
    assert http.get(f"{API}/studies/bad").status_code == 404


def test_patch_of_an_unknown_study_is_404(http: TestClient) -> None:
    assert http.patch(f"{API}/studies/nobody", json={"n_trials": 3}).status_code == 404


# --- listing ----------------------------------------------------------------------------------
def test_studies_are_paginated_and_filtered_by_state(http: TestClient) -> None:
    names = [f"s{i}" for i in range(5)]
    for name in names:
        scheduled(http, name, n_trials=1 if name == "s1" else 5)
    http.post(f"{API}/studies/s3/stop")
    worker = ScriptedWorker(http, "w", "s1")
    trial = worker.claim()
    assert worker.complete(trial.trial_id, 1.0).status_code == 200  # type: ignore[union-attr]

    def listed(**params: Any) -> list[str]:
        r = http.get(f"{API}/studies", params=params)
        assert r.status_code == 200, r.text
        return [s["name"] for s in r.json()]

    assert listed() == names  # no parameters: every study, as before
    assert listed(limit=2) == ["s0", "s1"]
    assert listed(limit=2, offset=3) == ["s3", "s4"]
    assert listed(offset=5) == []
    assert listed(state="done") == ["s1"]
    assert listed(state="stopped") == ["s3"]
    assert listed(state="running") == ["s0", "s2", "s4"]
    assert listed(state="running", limit=1, offset=1) == ["s2"]
    states = {s["name"]: s["state"] for s in http.get(f"{API}/studies").json()}
    assert states == {
        "s0": "running",
        "s1": "done",
        "s2": "running",
        "s3": "stopped",
        "s4": "running",
    }
    for bad in ({"limit": 0}, {"offset": -1}, {"state": "finished"}):
        assert http.get(f"{API}/studies", params=bad).status_code == 422


def test_an_extended_study_leaves_the_done_list(http: TestClient) -> None:
    scheduled(http, "again", n_trials=1)
    worker = ScriptedWorker(http, "w", "again")
    trial = worker.claim()
    assert worker.complete(trial.trial_id, 1.0).status_code == 200  # type: ignore[union-attr]
    assert [s["name"] for s in http.get(f"{API}/studies", params={"state": "done"}).json()] == [
        "again"
    ]
    assert http.patch(f"{API}/studies/again", json={"n_trials": 2}).status_code == 200
    assert http.get(f"{API}/studies", params={"state": "done"}).json() == []
    [again] = http.get(f"{API}/studies", params={"state": "running"}).json()
    assert again["n_trials"] == 2
