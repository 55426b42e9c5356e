"""A server killed (kill -9) and started again on the same storage mid-study loses nothing:
studies, trials, their reports and checkpoints, and the trials waiting to be retried survive;
a report the worker repeats for an epoch stored before the restart is harmless."""

from __future__ import annotations

import os

import httpx
import optuna
from optuna.trial import TrialState

from tests.conftest import ServerFactory
from tests.scripted import API, ScriptedWorker, create_study, summary, trials, unique


def test_kill_and_restart_mid_study(server_factory: ServerFactory, storage_url: str) -> None:
    server = server_factory(storage_url, process=True)
    name = unique("restart")
    checkpoint = os.urandom(10_000)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_study(
            http, name, n_trials=3, training={"epochs": 3, "seed": 0}, pruner={"name": "none"}
        )
        a, b = ScriptedWorker(http, "w-a", name), ScriptedWorker(http, "w-b", name)
        running = a.claim()
        assert running is not None
        assert a.report(running.trial_id, 0, 1.0).status_code == 200
        assert a.report(running.trial_id, 1, 0.8).status_code == 200
        assert (
            http.put(
                f"{API}/trials/{running.trial_id}/checkpoint",
                params={"epoch": 1},
                content=checkpoint,
            ).status_code
            == 204
        )
        handed_back = b.claim()
        assert handed_back is not None
        assert b.fail(handed_back.trial_id, "stopping", retry=True).status_code == 200
        before = summary(http, name)
        trials_before = trials(http, name)
        assert before["counts"] == {
            "waiting": 1,
            "running": 1,
            "paused": 0,
            "complete": 0,
            "pruned": 0,
            "fail": 1,
        }

    server.kill()
    server.start()

    with httpx.Client(base_url=server.url, timeout=60) as http:
        a, b = ScriptedWorker(http, "w-a", name), ScriptedWorker(http, "w-b", name)
        assert a.heartbeat(running.trial_id).status_code == 200  # the lease outlived the restart
        after = summary(http, name)
        assert after["counts"] == before["counts"] and after["spec"] == before["spec"]
        assert trials(http, name) == trials_before
        study = optuna.load_study(study_name=name, storage=server.storage)
        assert [t.state for t in study.trials] == [
            TrialState.RUNNING,
            TrialState.FAIL,
            TrialState.WAITING,
        ]

        # The worker never heard back about epoch 1 and sends it again: harmless.
        r = a.report(running.trial_id, 1, 0.8)
        assert r.status_code == 200 and r.json() == {"prune": False, "pause": False}
        assert http.get(f"{API}/trials/{running.trial_id}/checkpoint").content == checkpoint
        assert a.report(running.trial_id, 2, 0.7).status_code == 200
        assert a.complete(running.trial_id, 0.7).status_code == 200

        retry = b.claim()  # the trial waiting since before the restart
        assert retry is not None and retry.number == 2 and retry.params == handed_back.params
        assert trials(http, name)[2]["retry_of"] == handed_back.number
        assert b.run(retry, [0.9, 0.8, 0.75]) == "complete"
        last = b.claim()
        assert last is not None and last.number == 3
        assert b.run(last, [0.95, 0.85, 0.8]) == "complete"
        assert b.claim() is None
        assert summary(http, name)["state"] == "done"

    study = optuna.load_study(study_name=name, storage=server.storage)
    assert study.trials[0].intermediate_values == {0: 1.0, 1: 0.8, 2: 0.7}
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
