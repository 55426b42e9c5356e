"""Samplers and pruners run by a server, not inside `study.optimize`: no hook may answer 500.

Optuna's grid sampler calls `study.stop()` when its grid is used up, which raises outside
`optimize`; the server runs every sampler and pruner from requests, so each is driven through
reports and completions here. A grid study ends when its grid is exhausted.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.scripted import API, ScriptedWorker, create_study, summary, trials, unique

# 3 x 2 = 6 combinations; the baseline (lr 0.01, momentum 0.9) is one of them.
SMALL_GRID = {
    "lr": {"type": "categorical", "choices": [0.01, 0.02, 0.05]},
    "momentum": {"type": "categorical", "choices": [0.9, 0.95]},
}


def _run_pool(http: httpx.Client, study: str, workers: int) -> list[int]:
    """`workers` scripted workers in threads, each claiming and completing until a claim
    answers 204. Returns every status code the server answered."""
    statuses: list[int] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as own:
            while True:
                r = own.post(f"{API}/trials/claim", json={"worker_id": f"grid-{k}", "study": study})
                with lock:
                    statuses.append(r.status_code)
                if r.status_code != 200:
                    return
                trial = r.json()
                loss = 1.0 + trial["params"]["lr"] * 10 + trial["params"]["momentum"]
                for epoch in range(2):
                    rep = own.post(
                        f"{API}/trials/{trial['trial_id']}/report",
                        json={"epoch": epoch, "val_loss": loss},
                    )
                    with lock:
                        statuses.append(rep.status_code)
                done = own.post(
                    f"{API}/trials/{trial['trial_id']}/complete", json={"val_loss": loss}
                )
                with lock:
                    statuses.append(done.status_code)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return statuses


def test_a_grid_study_runs_each_combination_once_and_ends(client: httpx.Client) -> None:
    name = unique("grid")
    create_study(
        client,
        name,
        sampler={"name": "grid", "seed": 0},
        search_space=SMALL_GRID,
        pruner={"name": "none"},
        n_trials=10,
        training={"epochs": 2, "seed": 0},
    )
    statuses = _run_pool(client, name, workers=3)
    assert all(s < 500 for s in statuses), statuses
    assert statuses.count(204) == 3  # every worker was told there is nothing left

    done = trials(client, name)
    assert len(done) == 6
    assert all(t["state"] == "complete" for t in done)
    combos = {(t["params"]["lr"], t["params"]["momentum"]) for t in done}
    assert len(combos) == 6  # no combination twice, the baseline's included
    study = summary(client, name)
    assert study["state"] == "done"
    assert "grid is exhausted" in study["state_reason"]
    r = client.post(f"{API}/trials/claim", json={"worker_id": "late", "study": name})
    assert r.status_code == 204


def test_a_grid_waits_for_running_trials_without_handing_out_duplicates(
    client: httpx.Client,
) -> None:
    name = unique("grid-busy")
    create_study(
        client,
        name,
        sampler={"name": "grid"},
        search_space=SMALL_GRID,
        baseline=False,
        pruner={"name": "none"},
        n_trials=10,
    )
    worker = ScriptedWorker(client, "grid-busy", study=name)
    held = [worker.claim() for _ in range(6)]
    assert all(held)
    assert len({(c.params["lr"], c.params["momentum"]) for c in held}) == 6
    assert worker.claim() is None  # a 7th worker gets nothing rather than a duplicate
    study = summary(client, name)
    assert study["state"] == "running"
    assert "6 still in flight" in study["state_reason"]
    # A trial handed back is run again (the same combination), then the grid ends.
    assert worker.fail(held[0].trial_id, "preempted", retry=True).status_code == 200
    again = worker.claim()
    assert again is not None and again.params == held[0].params
    for trial in [again, *held[1:]]:
        assert worker.complete(trial.trial_id, 1.0).status_code == 200
    assert summary(client, name)["state"] == "done"


SAMPLERS: list[dict[str, Any]] = [
    {"sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2}},
    {"sampler": {"name": "random", "seed": 0}},
    {"sampler": {"name": "cmaes", "seed": 0, "n_startup_trials": 1}},
    {"sampler": {"name": "qmc", "seed": 0}},
    {"sampler": {"name": "gp", "seed": 0, "n_startup_trials": 2}},
    {"sampler": {"name": "grid", "seed": 0}, "search_space": "sgd_steplr_grid"},
]
PRUNERS: list[dict[str, Any]] = [
    {"name": "median", "n_startup_trials": 1},
    {"name": "percentile", "percentile": 50.0, "n_startup_trials": 1},
    {"name": "successive_halving", "min_resource": 1},
    {"name": "hyperband", "min_resource": 1, "max_resource": 3},
    {"name": "threshold", "upper": 1.5},
    {"name": "none"},
]


@pytest.mark.parametrize(
    ("sampler", "pruner"),
    [(s, {"name": "hyperband", "min_resource": 1, "max_resource": 3}) for s in SAMPLERS]
    + [
        ({"sampler": {"name": "grid", "seed": 0}, "search_space": "sgd_steplr_grid"}, p)
        for p in PRUNERS
    ],
    ids=[f"{s['sampler']['name']}-hyperband" for s in SAMPLERS]
    + [f"grid-{p['name']}" for p in PRUNERS],
)
def test_every_sampler_and_pruner_answers_reports_and_completions(
    client: httpx.Client, sampler: dict[str, Any], pruner: dict[str, Any]
) -> None:
    """Hooks (after_trial, the pruners' study filters) run inside requests: each message of a
    few trials answers 200, pruned or not."""
    name = unique("hooks")
    create_study(
        client, name, **sampler, pruner=pruner, n_trials=5, training={"epochs": 3, "seed": 0}
    )
    worker = ScriptedWorker(client, "hooks", study=name)
    ends = []
    while (trial := worker.claim()) is not None:
        ends.append(worker.run(trial, [2.0 - 0.1 * trial.number, 1.8, 1.0 + trial.number]))
    assert len(ends) == 5
    assert summary(client, name)["state"] == "done"
