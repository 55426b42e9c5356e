"""The asha pruner through the protocol, on each backend: a report that ends a rung continues,
pauses or stops the trial as ASHA ranks it; a paused trial frees its worker, keeps its
checkpoint and is promoted (the same trial, resumed from that checkpoint) when it ranks in its
rung's top 1/reduction_factor; paused trials that nothing can promote end as pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from service import asha
from service.keys import CHECKPOINT, PAUSED_AFTER_EPOCH
from service.pausing import PausedAsPruned
from tests.scripted import API, Claimed, ScriptedWorker, create_study, summary, trials, unique
from tests.servers import Server, digits_spec

PROMOTION = {"name": "asha", "reduction_factor": 3, "min_resource": 1, "mode": "promotion"}
PAUSE = {"prune": False, "pause": True}
GO_ON = {"prune": False, "pause": False}


def _study(http: httpx.Client, prefix: str, **overrides: Any) -> str:
    name = unique(prefix)
    spec: dict[str, Any] = {
        "pruner": PROMOTION,
        "training": {"epochs": 9, "seed": 0},  # rungs after epochs 1 and 3
        "baseline": False,
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 3,
    }
    create_study(http, name, **{**spec, **overrides})
    return name


def _checkpoint(http: httpx.Client, trial_id: int, epoch: int) -> httpx.Response:
    return http.put(
        f"{API}/trials/{trial_id}/checkpoint",
        params={"epoch": epoch},
        content=f"state after epoch {epoch}".encode(),
        headers={"content-type": "application/octet-stream"},
    )


def _pause(http: httpx.Client, trial_id: int, epoch: int) -> httpx.Response:
    return http.post(f"{API}/trials/{trial_id}/pause", json={"epoch": epoch})


def _report_and_pause(worker: ScriptedWorker, trial: Claimed, epoch: int, loss: float) -> None:
    r = worker.report(trial.trial_id, epoch, loss)
    assert r.status_code == 200 and r.json() == PAUSE, r.text
    assert _checkpoint(worker.http, trial.trial_id, epoch).status_code == 204
    r = _pause(worker.http, trial.trial_id, epoch)
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text


def _checkpoint_file(server: Server, trial: optuna.trial.FrozenTrial) -> Path:
    return server.data_dir / "artifacts" / trial.system_attrs[CHECKPOINT]["artifact_id"]


def _by_number(http: httpx.Client, name: str) -> dict[int, dict[str, Any]]:
    return {t["number"]: t for t in trials(http, name)}


def test_rungs_and_decisions() -> None:
    assert asha.rung_epochs(1, 3, 27) == (1, 3, 9)
    assert asha.rung_epochs(2, 2, 9) == (2, 4, 8)
    assert asha.rung_epochs(1, 3, 1) == ()
    assert asha.rung_of_epoch((1, 3, 9), 2) == 1 and asha.rung_of_epoch((1, 3, 9), 1) is None
    # promotion: the top n // eta continue; stopping lets the best of the first eta - 1 on
    assert asha.decide(0.5, [0.5], 3, True, "promotion") == "pause"
    assert asha.decide(0.5, [0.5], 3, True, "stopping") == "continue"
    assert asha.decide(0.6, [0.5, 0.6], 3, True, "stopping") == "stop"
    assert asha.decide(0.4, [0.5, 0.6, 0.4], 3, True, "promotion") == "continue"
    assert asha.decide(0.9, [0.5, 0.6, 0.9], 3, False, "promotion") == "continue"  # maximise
    # the highest rung first, then the best value; a rung promotes at most n // eta
    paused = [asha.Paused(1, 0, 0.1), asha.Paused(2, 1, 0.5), asha.Paused(3, 0, 0.3)]
    values = {0: [0.1, 0.3, 0.2, 0.9, 0.8, 0.7], 1: [0.5, 0.4, 0.6]}
    assert asha.promotion(paused, values, 3, True) == paused[0]  # rung 1: 0.5 is 2nd of 3
    values[1] = [0.5, 0.6, 0.7]
    assert asha.promotion(paused, values, 3, True) == paused[1]
    assert asha.promotion(paused[2:], {0: [0.3, 0.1, 0.2]}, 3, True) is None
    # draining: a rung's best goes on even below reduction_factor trials, no other one
    assert asha.promotion([paused[1]], {1: [0.5]}, 3, True) is None
    assert asha.promotion([paused[1]], {1: [0.5]}, 3, True, draining=True) == paused[1]
    assert asha.promotion([paused[1]], {1: [0.5, 0.4]}, 3, True, draining=True) is None


def test_promotion_pauses_resumes_and_ends_paused_trials(
    client: httpx.Client, shared_server: Server
) -> None:
    name = _study(client, "asha")
    worker = ScriptedWorker(client, "w-asha", name)
    other = ScriptedWorker(client, "w-asha-2", name)

    first = worker.next_trial()
    r = worker.report(first.trial_id, 0, 1.0)
    assert r.json() == PAUSE  # alone at the first rung: 0 of 1 go on
    # Pausing needs the rung's checkpoint first; the holder's other messages are refused after.
    assert _pause(client, first.trial_id, 0).status_code == 409
    assert _checkpoint(client, first.trial_id, 0).status_code == 204
    assert _pause(client, first.trial_id, 0).status_code == 200
    assert _pause(client, first.trial_id, 0).status_code == 200  # the same message again
    assert worker.report(first.trial_id, 0, 1.0).json() == PAUSE  # a retried report
    assert worker.heartbeat(first.trial_id).status_code == 409
    assert _checkpoint(client, first.trial_id, 0).status_code == 409
    assert worker.complete(first.trial_id, 1.0).status_code == 409

    second = worker.next_trial()  # the worker is free; nothing ranks yet: a new configuration
    assert second.trial_id != first.trial_id and second.body["resume"] is None
    _report_and_pause(worker, second, 0, 0.5)
    third = worker.next_trial()
    _report_and_pause(worker, third, 0, 2.0)  # 3rd of 3 at the rung

    counts = summary(client, name)["counts"]
    assert (counts["paused"], counts["running"]) == (3, 0)
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    kept = [_checkpoint_file(shared_server, t) for t in study.get_trials()]
    assert all(f.exists() for f in kept)  # one per paused trial
    # The budget of configurations is spent: the best of the rung (the top 3 // 3) is promoted.
    promoted = other.next_trial()
    assert promoted.trial_id == second.trial_id and promoted.params == second.params
    assert promoted.body["resume"] == {
        "epoch": 0,
        "checkpoint_url": f"/api/v1/trials/{second.trial_id}/checkpoint",
    }
    assert client.get(promoted.body["resume"]["checkpoint_url"]).content == b"state after epoch 0"
    # While it runs, it may make a paused trial rank: ask again soon.
    waiting = worker.claim()
    assert waiting is None
    listed = _by_number(client, name)
    assert listed[second.number]["state"] == "running"
    assert listed[second.number]["promotions"] == 1
    assert listed[second.number]["paused_after_epoch"] is None
    assert listed[first.number]["state"] == "paused"
    assert listed[first.number]["paused_after_epoch"] == 0
    # The trial's old worker no longer holds it.
    assert (
        client.post(
            f"{API}/trials/{second.trial_id}/heartbeat", params={"worker_id": "w-asha"}
        ).status_code
        == 409
    )

    assert other.report(promoted.trial_id, 1, 0.4).json() == GO_ON
    _report_and_pause(other, promoted, 2, 0.3)  # alone at the second rung

    # Nothing runs and nothing is left to sample, so no rung can grow: the best of the highest
    # rung goes on even though fewer than 3 trials reached it, and trains to its last epoch.
    again = worker.next_trial()
    assert again.trial_id == second.trial_id and again.body["resume"]["epoch"] == 2
    for epoch in range(3, 9):
        assert worker.report(again.trial_id, epoch, 0.3 - epoch / 100).json() == GO_ON
    assert worker.complete(again.trial_id, 0.22).status_code == 200

    # Nothing runs, nothing is left, and neither paused trial is its rung's best: they end.
    assert other.claim() is None
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    ended = {t.number: t for t in study.get_trials()}
    assert ended[second.number].state == TrialState.COMPLETE
    assert list(ended[second.number].intermediate_values) == list(range(9))  # one curve
    assert ended[second.number].user_attrs["promotions"] == 2
    assert {ended[n].state for n in (first.number, third.number)} == {TrialState.PRUNED}
    assert ended[first.number].value == 1.0
    # Their checkpoints go when they end: none is left.
    assert not any(_checkpoint_file(shared_server, t).exists() for t in ended.values())
    final = summary(client, name)
    assert final["state"] == "done" and final["counts"]["paused"] == 0
    assert (final["counts"]["pruned"], final["counts"]["complete"]) == (2, 1)
    assert final["best"]["number"] == second.number


def test_a_trial_in_the_top_of_its_rung_continues(client: httpx.Client) -> None:
    name = _study(client, "asha-top", n_trials=4)
    worker = ScriptedWorker(client, "w-asha-top", name)
    for loss in (1.0, 2.0, 3.0):
        _report_and_pause(worker, worker.next_trial(), 0, loss)
    promoted = worker.next_trial()  # 1.0 ranks in the top 3 // 3: promoted before sampling
    assert promoted.body["resume"] is not None and promoted.body["resume"]["epoch"] == 0
    last = worker.next_trial()
    assert last.body["resume"] is None
    assert worker.report(last.trial_id, 0, 0.1).json() == GO_ON  # 1st of 4: top 4 // 3


def test_stopping_mode_prunes_instead(client: httpx.Client) -> None:
    name = _study(client, "asha-stop", pruner={**PROMOTION, "mode": "stopping"})
    worker = ScriptedWorker(client, "w-asha-stop", name)
    best = worker.next_trial()
    assert worker.report(best.trial_id, 0, 0.5).json() == GO_ON  # the best so far goes on
    worse = worker.next_trial()
    assert worker.report(worse.trial_id, 0, 0.9).json() == {"prune": True, "pause": False}
    assert _checkpoint(client, best.trial_id, 0).status_code == 204
    r = _pause(client, best.trial_id, 0)
    assert r.status_code == 409 and "does not pause" in r.json()["detail"]


def test_pausing_is_refused_off_a_rung_and_for_other_workers(client: httpx.Client) -> None:
    name = _study(client, "asha-bad")
    worker = ScriptedWorker(client, "w-asha-bad", name)
    trial = worker.next_trial()
    assert worker.report(trial.trial_id, 0, 1.0).json() == PAUSE
    assert _checkpoint(client, trial.trial_id, 0).status_code == 204
    r = client.post(
        f"{API}/trials/{trial.trial_id}/pause",
        params={"worker_id": "someone-else"},
        json={"epoch": 0},
    )
    assert r.status_code == 409
    assert _pause(client, trial.trial_id, 1).status_code == 409  # not reported, not a rung
    r = _pause(client, trial.trial_id, -1)
    assert r.status_code == 422 and r.json()["field"] == "epoch"
    assert summary(client, name)["counts"]["paused"] == 0  # nothing changed


@pytest.mark.parametrize(
    ("pruner", "field"),
    [
        ({**PROMOTION, "min_resource": 9}, "pruner"),  # no rung before the last epoch
        ({**PROMOTION, "mode": "freeze"}, "pruner"),
        ({**PROMOTION, "reduction_factor": 1}, "pruner"),
    ],
)
def test_bad_asha_options_are_422(client: httpx.Client, pruner: dict, field: str) -> None:
    name = unique("asha-422")
    r = client.post(f"{API}/studies", json=digits_spec(name, pruner=pruner, training={"epochs": 9}))
    assert r.status_code == 422, r.text
    assert r.json()["field"].startswith(field)
    assert client.get(f"{API}/studies/{name}").status_code == 404


def test_the_baseline_trains_to_its_last_epoch(client: httpx.Client) -> None:
    """The comparison with the common recipe needs its whole run: never paused nor stopped."""
    name = _study(client, "asha-base", baseline=True, training={"epochs": 4, "seed": 0})
    worker = ScriptedWorker(client, "w-asha-base", name)
    baseline = worker.next_trial()
    assert baseline.body["is_baseline"]
    for epoch in range(3):  # alone and at the rungs after epochs 1 and 3: it would pause
        assert worker.report(baseline.trial_id, epoch, 9.0).json() == GO_ON
    other = worker.next_trial()
    assert worker.report(other.trial_id, 0, 9.5).json() == PAUSE  # the others are ranked


def test_samplers_see_paused_trials_as_pruned() -> None:
    """TPE ranks a pruned trial by the rung it reached and its value there; a RUNNING one, with
    constant liar, among the worst. A paused trial is the former."""
    study = optuna.create_study()
    done = study.ask()
    study.tell(done, 1.0)
    paused, running = study.ask(), study.ask()
    for trial in (paused, running):
        trial.report(0.5, 0)
    paused.set_user_attr(PAUSED_AFTER_EPOCH, 0)
    view = PausedAsPruned(study)

    def states(**kw: Any) -> list[str]:
        return [t.state.name for t in view._get_trials(**kw)]

    assert states() == ["COMPLETE", "PRUNED", "RUNNING"]
    everything = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    assert states(states=everything, use_cache=True) == ["COMPLETE", "PRUNED", "RUNNING"]
    assert states(states=(TrialState.COMPLETE, TrialState.PRUNED)) == ["COMPLETE", "PRUNED"]
    assert states(states=(TrialState.RUNNING,)) == ["RUNNING"]
    assert [t.state for t in study.get_trials()][1] == TrialState.RUNNING  # its own unchanged
    assert view.get_trials()[1].intermediate_values == {0: 0.5}

    class Recording(optuna.samplers.RandomSampler):
        """Records the states of the trials a sampler is shown."""

        seen: list[str] = []

        def sample_independent(self, study, trial, name, distribution):  # type: ignore[no-untyped-def]
            self.seen = [t.state.name for t in study._get_trials(deepcopy=False)]
            return super().sample_independent(study, trial, name, distribution)

    sampler = Recording(seed=0)
    study.sampler = sampler
    optuna.trial.Trial(view, study.ask()._trial_id).suggest_float("x", 0, 1)  # type: ignore[arg-type]
    assert sampler.seen[:3] == ["COMPLETE", "PRUNED", "RUNNING"]  # sampled through the view
