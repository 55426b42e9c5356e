"""Study lifecycle: stop then resume; warm start from an earlier study (its best configurations
first, its history as prior evidence); what a worker hears about a trial of a stopped or
deleted study. Scripted workers, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from tests.scripted import API, ScriptedWorker, create_study, summary, trials, unique
from tests.servers import Server, digits_spec
from worker.client import LeaseLost, ProtocolError, ServerClient, TrialGone
from worker.heartbeat import Heartbeat

LR_ONLY = {"lr": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True}}


def _load(server: Server, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=server.storage)


# --- stop, resume -------------------------------------------------------------------------------
def test_stop_then_resume_hands_out_trials_again(client: httpx.Client) -> None:
    name = unique("resume")
    create_study(client, name, n_trials=3)
    worker = ScriptedWorker(client, "w-resume", name)
    assert client.post(f"{API}/studies/{name}/stop").json()["state"] == "stopped"
    assert worker.claim() is None  # 204

    r = client.post(f"{API}/studies/{name}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "running" and r.json()["state_reason"] is None
    trial = worker.claim()
    assert trial is not None and trial.body["is_baseline"]
    assert worker.run(trial, [0.9]) == "complete"

    # Resuming a study that is not stopped changes nothing.
    r = client.post(f"{API}/studies/{name}/resume")
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert r.json()["finished"] == 1
    assert worker.claim() is not None


def test_stop_cancel_running_hands_trials_back_and_resume_reruns_them(client: httpx.Client) -> None:
    name = unique("cancel")
    create_study(client, name, n_trials=4, pruner={"name": "none"})
    workers = [ScriptedWorker(client, f"w-cancel-{i}", name) for i in range(2)]
    held = [w.claim() for w in workers]
    assert all(held)
    assert workers[0].report(held[0].trial_id, 0, 0.7).status_code == 200

    r = client.post(f"{API}/studies/{name}/stop", params={"cancel_running": True})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "stopped" and r.json()["counts"]["running"] == 0
    for worker, trial in zip(workers, held, strict=True):
        # The workers learn at their next message, and drop the trial.
        assert worker.heartbeat(trial.trial_id).status_code == 409
    shown = {t["number"]: t for t in trials(client, name)}
    for trial in held:
        assert shown[trial.number]["state"] == "fail"
        assert "cancel_running" in shown[trial.number]["fail_reason"]
    waiting = [t for t in shown.values() if t["state"] == "waiting"]
    assert sorted(t["retry_of"] for t in waiting) == sorted(t.number for t in held)
    assert workers[0].claim() is None

    assert client.post(f"{API}/studies/{name}/resume").status_code == 200
    reruns = [workers[0].claim(), workers[1].claim()]
    assert sorted(tuple(sorted(t.params.items())) for t in reruns) == sorted(
        tuple(sorted(t.params.items())) for t in held
    )
    assert {t.body["is_baseline"] for t in reruns} == {True, False}


def test_stop_without_cancel_lets_running_trials_finish(client: httpx.Client) -> None:
    name = unique("no-cancel")
    create_study(client, name, n_trials=2, pruner={"name": "none"})
    worker = ScriptedWorker(client, "w-no-cancel", name)
    trial = worker.claim()
    assert client.post(f"{API}/studies/{name}/stop").json()["counts"]["running"] == 1
    assert worker.run(trial, [0.5]) == "complete"


def test_resume_an_unknown_study_is_404(client: httpx.Client) -> None:
    r = client.post(f"{API}/studies/{unique('ghost')}/resume")
    assert r.status_code == 404 and "no study" in r.json()["detail"]


# --- warm start ---------------------------------------------------------------------------------
def _source(client: httpx.Client, name: str, losses: list[float]) -> list[dict]:
    """A finished study over lr only (random sampler): the baseline and len(losses) - 1 more
    trials, completed with these losses in order. Returns its trials."""
    create_study(
        client,
        name,
        n_trials=len(losses),
        search_space=LR_ONLY,
        sampler={"name": "random", "seed": 7},
        pruner={"name": "none"},
    )
    worker = ScriptedWorker(client, f"w-{name}", name)
    for loss in losses:
        claimed = worker.claim()
        assert claimed is not None
        assert worker.run(claimed, [loss + 1, loss]) == "complete"
    return trials(client, name)


def test_warm_start_runs_the_source_top_k_first_and_learns_from_its_history(
    client: httpx.Client, shared_server: Server
) -> None:
    source = unique("warm-src")
    done = _source(client, source, [0.50, 0.20, 0.40, 0.10, 0.30, 0.35, 0.25])
    # The new space is narrower: configurations outside it do not fit.
    low = sorted(t["params"]["lr"] for t in done)[2]
    space = {"lr": {"type": "float", "low": low, "high": 0.1, "log": True}}
    fitting = [t for t in done if t["params"]["lr"] >= low]
    assert 4 <= len(fitting) < len(done)

    name = unique("warm")
    created = create_study(
        client,
        name,
        n_trials=5,
        search_space=space,
        pruner={"name": "none"},
        warm_start={"study": source, "top_k": 3, "history": True},
    )
    assert created["finished"] == 0 and created["counts"]["complete"] == 0
    assert created["spec"]["warm_start"] == {"study": source, "top_k": 3, "history": True}

    listed = trials(client, name)
    priors = [t for t in listed if t["prior"]]
    assert sorted(t["params"]["lr"] for t in priors) == sorted(t["params"]["lr"] for t in fitting)
    assert all(t["state"] == "complete" and not t["is_baseline"] for t in priors)

    # The baseline, then the source's best fitting configurations, best first.
    expected = [t["params"] for t in sorted(fitting, key=lambda t: t["val_loss"])]
    expected = [p for p in expected if p["lr"] != 0.01][:3]  # the baseline runs lr 0.01 anyway
    worker = ScriptedWorker(client, f"w-{name}", name)
    first = worker.claim()
    assert first is not None and first.body["is_baseline"]
    handed = []
    for _ in expected:
        claimed = worker.claim()
        assert claimed is not None and not claimed.body["is_baseline"]
        handed.append(claimed)
    assert [c.params for c in handed] == expected

    # Prior trials count against nothing: the five trials of the budget all run.
    for claimed, loss in zip([first, *handed], [0.9, 0.8, 0.7, 0.6], strict=False):
        assert worker.run(claimed, [loss]) == "complete"
    left = 5 - 1 - len(handed)
    for _ in range(left):
        claimed = worker.claim()
        assert claimed is not None
        assert worker.run(claimed, [0.95]) == "complete"
    assert worker.claim() is None
    study = summary(client, name)
    assert study["state"] == "done" and study["finished"] == 5
    assert study["counts"]["complete"] == 5
    # The priors' losses (0.1 and up) are lower than any trial run here: none is the best.
    assert study["best"]["val_loss"] == [0.9, 0.8, 0.7, 0.6][len(handed)]
    best = client.get(f"{API}/studies/{name}/best", params={"k": 10}).json()
    assert len(best["trials"]) == 5 and best["baseline"]["number"] == first.number

    # The sampler sees the priors as complete trials of the new study, with its distributions.
    stored = _load(shared_server, name).get_trials()
    marked = [t for t in stored if t.user_attrs.get("prior")]
    assert len(marked) == len(fitting)
    assert all(
        t.state == TrialState.COMPLETE and t.user_attrs["prior"].startswith(source) for t in marked
    )
    assert all(t.distributions["lr"].low == low for t in marked)


def test_warm_start_without_history_and_the_budget_caps_top_k(client: httpx.Client) -> None:
    source = unique("warm-src")
    _source(client, source, [0.5, 0.2, 0.4, 0.1])
    name = unique("warm-nohist")
    create_study(
        client,
        name,
        n_trials=2,
        search_space=LR_ONLY,
        pruner={"name": "none"},
        warm_start={"study": source, "top_k": 10, "history": False},
    )
    listed = trials(client, name)
    assert not any(t["prior"] for t in listed)
    # The baseline and one configuration: n_trials is 2.
    assert [t["state"] for t in listed] == ["waiting", "waiting"]


def test_pruner_ignores_prior_trials(client: httpx.Client) -> None:
    source = unique("warm-src")
    _source(client, source, [0.5, 0.2, 0.4, 0.1])
    name = unique("warm-prune")
    create_study(
        client,
        name,
        n_trials=5,
        search_space=LR_ONLY,
        baseline=False,
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        warm_start={"study": source, "top_k": 0},
    )
    assert sum(t["prior"] for t in trials(client, name)) == 4
    worker = ScriptedWorker(client, f"w-{name}", name)
    first = worker.claim()
    assert first is not None and worker.run(first, [1.0, 1.0]) == "complete"
    # One complete trial of its own, fewer than n_startup_trials: no pruning yet, however bad.
    # (Counted among the completed trials, the four priors would have let it prune.)
    second = worker.claim()
    assert second is not None
    r = worker.report(second.trial_id, 0, 50.0)
    assert r.status_code == 200 and r.json() == {"prune": False, "pause": False}


def test_warm_start_from_an_unknown_study_is_422(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("warm-ghost")
    r = client.post(
        f"{API}/studies", json=digits_spec(name, warm_start={"study": unique("no-such-study")})
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "warm_start.study"
    assert "no study named" in r.json()["detail"]
    assert name not in optuna.get_all_study_names(storage=shared_server.storage)
    r = client.post(f"{API}/studies", json=digits_spec(name, warm_start={"top_k": 2}))
    assert r.status_code == 422
    assert any(e["field"] == "warm_start.study" for e in r.json()["errors"])


# --- a stopped or deleted study while its trial runs ----------------------------------------------
def test_a_stopped_study_lets_its_running_trial_finish(client: httpx.Client) -> None:
    name = unique("stop-running")
    create_study(client, name, n_trials=3)
    worker = ScriptedWorker(client, "w-stop-running", name)
    running = worker.claim()
    assert running is not None
    assert client.post(f"{API}/studies/{name}/stop").status_code == 200
    assert worker.heartbeat(running.trial_id).status_code == 200
    assert worker.run(running, [0.8, 0.7]) == "complete"


def test_every_message_about_a_trial_of_a_deleted_study_is_404(client: httpx.Client) -> None:
    name = unique("deleted-running")
    create_study(client, name, n_trials=3)
    worker = ScriptedWorker(client, "w-deleted-running", name)
    running = worker.claim()
    assert running is not None
    assert worker.report(running.trial_id, 0, 0.9).status_code == 200
    assert client.delete(f"{API}/studies/{name}").status_code == 204
    answers = [
        worker.heartbeat(running.trial_id),
        worker.report(running.trial_id, 1, 0.8),
        client.put(
            f"{API}/trials/{running.trial_id}/checkpoint",
            params={"epoch": 0},
            content=b"state",
            headers={"Content-Type": "application/octet-stream"},
        ),
        client.put(
            f"{API}/trials/{running.trial_id}/weights",
            content=b"weights",
            headers={"Content-Type": "application/octet-stream"},
        ),
        worker.complete(running.trial_id, 0.8),
        worker.fail(running.trial_id, "gone", retry=True),
    ]
    assert [r.status_code for r in answers] == [404] * len(answers), [r.text for r in answers]


def test_the_worker_client_takes_a_404_for_its_trial_as_a_lost_lease(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("gone")
    create_study(client, name, n_trials=3)
    worker = ServerClient(shared_server.url, worker_id="w-gone", retry_for_s=5)
    try:
        claimed = worker.claim("w-gone", name, "cpu", "host-a")
        assert claimed is not None
        trial_id = claimed["trial_id"]
        assert client.delete(f"{API}/studies/{name}").status_code == 204
        calls = [
            lambda: worker.heartbeat(trial_id, retry_for_s=1),
            lambda: worker.report(trial_id, 0, 0.5, None),
            lambda: worker.upload_checkpoint(trial_id, 0, b"state"),
            lambda: worker.upload_weights(trial_id, b"weights"),
            lambda: worker.complete(trial_id, 0.5, None),
        ]
        for call in calls:
            with pytest.raises(TrialGone) as gone:
                call()
            assert isinstance(gone.value, LeaseLost) and gone.value.status == 404
        worker.fail(trial_id, "gone", retry=True)  # nothing to hand back: no error
        with Heartbeat(worker, trial_id, interval=0.2) as beats:  # stops the training loop
            assert beats.lost.wait(timeout=10)
        assert isinstance(beats.why, TrialGone)
        # A 404 that is not about its own trial stays a configuration error.
        with pytest.raises(ProtocolError) as unknown:
            worker.claim("w-gone", name, "cpu", "host-a")
        assert not isinstance(unknown.value, LeaseLost) and unknown.value.status == 404
    finally:
        worker.close()


def test_a_late_message_never_reaches_the_trial_that_took_a_deleted_trial_id(
    client: httpx.Client,
) -> None:
    """SQLite gives the highest trial ids to new trials after a delete: a message naming its
    worker about a deleted trial gets 409 there (404 where ids are not reused), and the new
    trial that took the id is left alone."""
    old, new = unique("id-old"), unique("id-new")
    create_study(client, old, n_trials=2, baseline=False)
    late = ScriptedWorker(client, "w-late", old).claim()
    assert late is not None
    assert client.delete(f"{API}/studies/{old}").status_code == 204
    create_study(client, new, n_trials=2, baseline=False)
    current = ScriptedWorker(client, "w-current", new).claim()
    assert current is not None

    mine = {"worker_id": "w-late"}
    answers = [
        client.post(f"{API}/trials/{late.trial_id}/heartbeat", params=mine),
        client.post(
            f"{API}/trials/{late.trial_id}/report", params=mine, json={"epoch": 3, "val_loss": 0.5}
        ),
        client.put(
            f"{API}/trials/{late.trial_id}/checkpoint",
            params={"epoch": 0, **mine},
            content=b"state",
            headers={"Content-Type": "application/octet-stream"},
        ),
        client.post(
            f"{API}/trials/{late.trial_id}/fail",
            params=mine,
            json={"reason": "late", "retry": False},
        ),
        client.post(f"{API}/trials/{late.trial_id}/complete", params=mine, json={"val_loss": 0.5}),
    ]
    expected = 409 if late.trial_id == current.trial_id else 404
    assert [r.status_code for r in answers] == [expected] * len(answers), [r.text for r in answers]
    [trial] = trials(client, new)
    assert trial["state"] == "running" and trial["epochs"] == 0 and trial["worker"] == "w-current"
    # Its own worker's messages still go through.
    worker = ScriptedWorker(client, "w-current", new)
    assert worker.run(current, [0.7]) == "complete"


def test_a_grid_study_counts_the_warm_start_configurations_as_its_combinations(
    client: httpx.Client,
) -> None:
    grid = {"lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1]}}
    options = {
        "search_space": grid,
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
    }
    source = unique("grid-src")
    create_study(client, source, n_trials=3, **options)
    worker = ScriptedWorker(client, f"w-{source}", source)
    losses = {0.001: 0.3, 0.01: 0.5, 0.1: 0.2}
    while (claimed := worker.claim()) is not None:
        assert worker.run(claimed, [losses[claimed.params["lr"]]]) == "complete"

    name = unique("grid-warm")
    create_study(client, name, n_trials=10, warm_start={"study": source, "top_k": 5}, **options)
    worker = ScriptedWorker(client, f"w-{name}", name)
    handed = []
    while (claimed := worker.claim()) is not None:
        handed.append(claimed.params["lr"])
        assert worker.run(claimed, [0.4]) == "complete"
    # The baseline (lr 0.01), then the source's others best first; the grid has nothing left.
    assert handed == [0.01, 0.1, 0.001]
    assert summary(client, name)["state"] == "done"
