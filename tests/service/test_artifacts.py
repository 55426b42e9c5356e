"""Checkpoints and weights: uploads come back byte for byte; a retried trial resumes from its
predecessor's checkpoint with the epochs it covers; the final weights of the top-k trials are
kept (the shared server keeps the top 2) and every other artifact is garbage-collected."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import optuna
from optuna.trial import TrialState

from service.keys import CHECKPOINT as CHECKPOINT_ATTR
from service.keys import WEIGHTS as WEIGHTS_ATTR
from tests.scripted import API, ScriptedWorker, create_study, trials, unique
from tests.servers import Server


def _put_checkpoint(http: httpx.Client, trial_id: int, epoch: int, data: bytes) -> httpx.Response:
    return http.put(
        f"{API}/trials/{trial_id}/checkpoint",
        params={"epoch": epoch},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def _put_weights(http: httpx.Client, trial_id: int, data: bytes) -> httpx.Response:
    return http.put(
        f"{API}/trials/{trial_id}/weights",
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def _artifact_file(server: Server, artifact_id: str) -> Path:
    return server.data_dir / "artifacts" / artifact_id


def test_checkpoint_round_trip(client: httpx.Client, shared_server: Server) -> None:
    name = unique("ckpt")
    create_study(client, name, n_trials=1)
    worker = ScriptedWorker(client, "w-ckpt", name)
    trial = worker.claim()
    assert trial is not None
    r = client.get(f"{API}/trials/{trial.trial_id}/checkpoint")
    assert r.status_code == 404  # none yet
    assert _put_checkpoint(client, trial.trial_id, 0, b"x").status_code == 422  # not reported
    assert worker.report(trial.trial_id, 0, 1.0).status_code == 200

    first = os.urandom(300_000)
    assert _put_checkpoint(client, trial.trial_id, 0, first).status_code == 204
    r = client.get(f"{API}/trials/{trial.trial_id}/checkpoint")
    assert r.status_code == 200 and r.content == first
    assert r.headers["content-type"] == "application/octet-stream"
    [stored] = optuna.load_study(study_name=name, storage=shared_server.storage).trials
    first_id = stored.system_attrs[CHECKPOINT_ATTR]["artifact_id"]
    assert _artifact_file(shared_server, first_id).read_bytes() == first

    # A newer checkpoint replaces the older one, whose file goes.
    assert worker.report(trial.trial_id, 1, 0.9).status_code == 200
    second = os.urandom(1000)
    assert _put_checkpoint(client, trial.trial_id, 1, second).status_code == 204
    assert client.get(f"{API}/trials/{trial.trial_id}/checkpoint").content == second
    [stored] = optuna.load_study(study_name=name, storage=shared_server.storage).trials
    assert stored.system_attrs[CHECKPOINT_ATTR]["epoch"] == 1
    assert not _artifact_file(shared_server, first_id).exists()

    for bad in ({"epoch": -1}, {"epoch": "last"}, {}):
        r = client.put(f"{API}/trials/{trial.trial_id}/checkpoint", params=bad, content=b"x")
        assert r.status_code == 422, r.text
    assert worker.complete(trial.trial_id, 0.9).status_code == 200
    assert _put_checkpoint(client, trial.trial_id, 1, b"late").status_code == 409


def test_a_retried_trial_resumes_from_the_checkpoint(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("resume")
    create_study(
        client, name, n_trials=1, training={"epochs": 5, "seed": 0}, pruner={"name": "none"}
    )
    worker = ScriptedWorker(client, "w-first", name)
    first = worker.claim()
    assert first is not None
    state = os.urandom(50_000)
    for epoch, loss in enumerate([1.0, 0.8, 0.7]):
        assert worker.report(first.trial_id, epoch, loss, val_accuracy=0.5).status_code == 200
        if epoch == 1:  # the last checkpoint covers epochs 0 and 1
            assert _put_checkpoint(client, first.trial_id, 1, state).status_code == 204
    assert worker.fail(first.trial_id, "preempted", retry=True).status_code == 200

    other = ScriptedWorker(client, "w-second", name)
    retry = other.claim()
    assert retry is not None and retry.params == first.params
    resume = retry.body["resume"]
    assert resume == {"epoch": 1, "checkpoint_url": f"/api/v1/trials/{retry.trial_id}/checkpoint"}
    r = client.get(resume["checkpoint_url"])
    assert r.status_code == 200 and r.content == state

    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    resumed = study.trials[retry.number]
    assert resumed.state == TrialState.RUNNING
    assert resumed.intermediate_values == {0: 1.0, 1: 0.8}  # what the checkpoint covers
    listed = trials(client, name)[retry.number]
    assert listed["retry_of"] == first.number and listed["resumed_from_epoch"] == 2
    assert listed["worker"] == "w-second" and listed["fail_reason"] is None
    assert listed["val_accuracy"] is None

    # It trains on from epoch 2: an epoch it has is answered again, a gap is refused.
    assert other.report(retry.trial_id, 1, 0.8).json() == {"prune": False, "pause": False}
    assert other.report(retry.trial_id, 3, 0.5).status_code == 422
    for epoch, loss in ((2, 0.7), (3, 0.6), (4, 0.5)):
        assert other.report(retry.trial_id, epoch, loss).status_code == 200
    assert other.complete(retry.trial_id, 0.5).status_code == 200
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    done = study.trials[retry.number]
    assert done.state == TrialState.COMPLETE and done.value == 0.5
    assert done.intermediate_values == {0: 1.0, 1: 0.8, 2: 0.7, 3: 0.6, 4: 0.5}
    assert study.trials[first.number].state == TrialState.FAIL
    # Neither trial runs any more and neither is in the top-k with weights: no checkpoint left.
    checkpoint_id = done.system_attrs[CHECKPOINT_ATTR]["artifact_id"]
    assert not _artifact_file(shared_server, checkpoint_id).exists()


def test_top_k_weights_are_kept_and_the_rest_collected(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("weights")
    create_study(client, name, n_trials=5, pruner={"name": "none"}, baseline=False)
    worker = ScriptedWorker(client, "w-weights", name)
    losses = [0.4, 0.1, 0.3, 0.2]  # keep_top_k is 2: trials 1 and 3 keep their weights
    weights = {}
    for number, loss in enumerate(losses):
        trial = worker.claim()
        assert trial is not None and trial.number == number
        assert worker.report(trial.trial_id, 0, loss).status_code == 200
        assert _put_checkpoint(client, trial.trial_id, 0, b"ckpt%d" % number).status_code == 204
        weights[number] = os.urandom(20_000)
        assert _put_weights(client, trial.trial_id, weights[number]).status_code == 204
        assert worker.complete(trial.trial_id, loss).status_code == 200
    running = worker.claim()  # the fifth trial, still running: its checkpoint stays
    assert running is not None
    assert worker.report(running.trial_id, 0, 0.05).status_code == 200
    assert _put_checkpoint(client, running.trial_id, 0, b"running").status_code == 204
    assert _put_weights(client, running.trial_id, b"w").status_code == 204

    for number in (1, 3):
        r = client.get(f"{API}/studies/{name}/trials/{number}/weights")
        assert r.status_code == 200 and r.content == weights[number]
        assert f"{name}-trial{number}.pt" in r.headers["content-disposition"]
    for number in (0, 2, 4, 99):
        r = client.get(f"{API}/studies/{name}/trials/{number}/weights")
        assert r.status_code == 404, (number, r.text)

    listed = {t["number"]: t for t in trials(client, name)}
    assert [n for n, t in sorted(listed.items()) if t["has_weights"]] == [1, 3, 4]
    best = client.get(f"{API}/studies/{name}/best", params={"k": 2}).json()
    assert [t["number"] for t in best["trials"]] == [1, 3]

    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    for trial in study.trials:
        weights_file = trial.system_attrs.get(WEIGHTS_ATTR)
        checkpoint_file = trial.system_attrs[CHECKPOINT_ATTR]["artifact_id"]
        if trial.state == TrialState.RUNNING:
            assert _artifact_file(shared_server, checkpoint_file).exists()
            assert _artifact_file(shared_server, weights_file).exists()
            continue
        assert _artifact_file(shared_server, weights_file).exists() == (trial.number in (1, 3))
        assert not _artifact_file(shared_server, checkpoint_file).exists()
    assert client.get(f"{API}/trials/{running.trial_id}/checkpoint").content == b"running"


def test_delete_removes_the_artifacts(client: httpx.Client, shared_server: Server) -> None:
    name = unique("delete-artifacts")
    create_study(client, name, n_trials=1, pruner={"name": "none"})
    worker = ScriptedWorker(client, "w-delete-artifacts", name)
    trial = worker.claim()
    assert trial is not None
    assert worker.report(trial.trial_id, 0, 0.3).status_code == 200
    assert _put_checkpoint(client, trial.trial_id, 0, b"c").status_code == 204
    assert _put_weights(client, trial.trial_id, b"w").status_code == 204
    assert worker.complete(trial.trial_id, 0.3).status_code == 200
    [stored] = optuna.load_study(study_name=name, storage=shared_server.storage).trials
    weights_file = _artifact_file(shared_server, stored.system_attrs[WEIGHTS_ATTR])
    assert weights_file.exists()
    assert client.delete(f"{API}/studies/{name}").status_code == 204
    assert not weights_file.exists()
