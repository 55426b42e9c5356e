"""Exact budgets under concurrency: 16 scripted workers, each with its own HTTP client, claim,
report and complete as fast as they can. The study ends with exactly n_trials finished trials,
no trial is handed out twice and no request fails with a 5xx. On PostgreSQL the workers talk
to two server processes on one database: the claim is serialised in the database."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ServerFactory
from tests.scripted import Claimed, ScriptedWorker, create_study, summary, unique
from tests.servers import Server

N_TRIALS = 30
N_WORKERS = 16
HAND_BACK = {3, 8, 13}  # trial numbers whose worker hands them back once after an epoch


class Run:
    """What all the workers saw, shared between their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claimed: list[Claimed] = []
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.handed_back = 0

    def record(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1


def _work(url: str, worker_id: str, study: str, run: Run) -> None:
    hooks = {"response": [run.record]}
    try:
        with httpx.Client(base_url=url, timeout=60, event_hooks=hooks) as http:
            worker = ScriptedWorker(http, worker_id, study)
            while (trial := worker.claim()) is not None:
                with run.lock:
                    run.claimed.append(trial)
                # A worker stopping hands its trial back: it is re-queued at once, and the
                # failed trial must not count against the budget.
                if trial.number in HAND_BACK:
                    assert worker.report(trial.trial_id, 0, 1.0).status_code == 200
                    assert worker.fail(trial.trial_id, "stopping", retry=True).status_code == 200
                    with run.lock:
                        run.handed_back += 1
                    continue
                loss = 1.0 + trial.number % 7 / 10
                worker.run(trial, [loss, loss * 0.9])
    except Exception as exc:  # noqa: BLE001 - reported by the test
        with run.lock:
            run.errors.append(f"{worker_id}: {exc!r}")


def _drive(urls: list[str], study: str) -> Run:
    run = Run()
    threads = [
        threading.Thread(target=_work, args=(urls[i % len(urls)], f"w{i}", study, run))
        for i in range(N_WORKERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "workers still running after 300 s"
    return run


def _check(run: Run, server: Server, study_name: str) -> None:
    assert not run.errors, run.errors
    assert not [code for code in run.statuses if code >= 500], run.statuses
    assert set(run.statuses) <= {200, 204}, run.statuses
    ids = [t.trial_id for t in run.claimed]
    numbers = [t.number for t in run.claimed]
    assert len(set(ids)) == len(ids), "a trial was handed out twice"
    assert len(set(numbers)) == len(numbers)

    study = optuna.load_study(study_name=study_name, storage=server.storage)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == N_TRIALS
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    # Every failed trial was handed back and retried by a trial that finished.
    assert states[TrialState.FAIL] == run.handed_back > 0
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in study.trials if t.state == TrialState.FAIL} <= retried
    assert len(study.trials) == len(run.claimed) == N_TRIALS + run.handed_back


def _study(server: Server) -> str:
    name = unique("crowd")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # The random sampler: what is tested is the budget, not the sampling.
        create_study(
            http,
            name,
            n_trials=N_TRIALS,
            training={"epochs": 2, "seed": 0},
            sampler={"name": "random", "seed": 0},
        )
    return name


@pytest.mark.slow
def test_sixteen_workers_two_servers_one_postgresql(
    server_factory: ServerFactory, storage_url: str
) -> None:
    if not storage_url.startswith("postgresql"):
        pytest.skip("two server processes on one database: PostgreSQL")
    first = server_factory(storage_url, process=True)
    second = server_factory(storage_url, process=True)
    name = _study(first)
    run = _drive([first.url, second.url], name)
    _check(run, first, name)
    with httpx.Client(base_url=second.url, timeout=60) as http:
        assert summary(http, name)["state"] == "done"
        assert summary(http, name)["finished"] == N_TRIALS


@pytest.mark.slow
def test_sixteen_workers_one_sqlite_server(server_factory: ServerFactory, storage_url: str) -> None:
    if not storage_url.startswith("sqlite"):
        pytest.skip("the SQLite variant")
    server = server_factory(storage_url, process=True)
    name = _study(server)
    run = _drive([server.url], name)
    _check(run, server, name)
