"""The worker protocol and the study resources, driven by a scripted worker; every assertion on
state is checked again in the storage with optuna.load_study."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from service.search_space import COMMON_RECIPE
from tests.scripted import (
    API,
    Claimed,
    ScriptedWorker,
    create_study,
    summary,
    trials,
    unique,
)
from tests.servers import Server, digits_spec

CORE = ("lr", "momentum", "step_size", "gamma", "warmup_epochs")


def _load(server: Server, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=server.storage)


def _claimed(worker: ScriptedWorker) -> Claimed:
    trial = worker.claim()
    assert trial is not None
    return trial


def test_baseline_first_then_exactly_n_trials(client: httpx.Client, shared_server: Server) -> None:
    name = unique("budget")
    create_study(client, name, n_trials=3)
    worker = ScriptedWorker(client, "w-budget", name)
    handed = [_claimed(worker) for _ in range(3)]
    assert handed[0].body["is_baseline"] is True
    assert handed[0].params == {k: COMMON_RECIPE[k] for k in CORE}
    assert handed[0].body["config"]["batch_size"] == 64  # absent params come from the recipe
    assert handed[0].body["spec"]["name"] == name
    assert handed[0].body["heartbeat_interval"] == 10
    assert [t.number for t in handed] == [0, 1, 2]
    assert worker.claim() is None  # three running: the budget is spent
    for i, trial in enumerate(handed):
        assert worker.run(trial, [1.0 - 0.1 * i]) == "complete"
    assert worker.claim() is None
    study = _load(shared_server, name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert summary(client, name)["state"] == "done"


def test_median_pruner_prunes_clearly_worse_trials(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("prune")
    create_study(
        client,
        name,
        n_trials=5,
        training={"epochs": 4, "seed": 0},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    )
    worker = ScriptedWorker(client, "w-prune", name)
    good = [1.0, 0.8, 0.6, 0.5]
    assert worker.run(_claimed(worker), good) == "complete"
    assert worker.run(_claimed(worker), [x + 0.05 for x in good]) == "complete"

    # Worse from the first epoch: pruned at epoch 0.
    bad = _claimed(worker)
    r = worker.report(bad.trial_id, 0, 5.0)
    assert r.status_code == 200 and r.json() == {"prune": True, "pause": False}
    # Fine at first, clearly worse at epoch 1: pruned there.
    late = _claimed(worker)
    assert worker.report(late.trial_id, 0, 0.9).json() == {"prune": False, "pause": False}
    assert worker.report(late.trial_id, 1, 3.0).json() == {"prune": True, "pause": False}
    # As good as the others: runs to the end.
    fine = _claimed(worker)
    assert worker.run(fine, [0.95, 0.75, 0.55, 0.45]) == "complete"

    study = _load(shared_server, name)
    by_number = {t.number: t for t in study.trials}
    assert by_number[bad.number].state == TrialState.PRUNED
    assert by_number[bad.number].intermediate_values == {0: 5.0}
    assert by_number[late.number].state == TrialState.PRUNED
    assert by_number[late.number].intermediate_values == {0: 0.9, 1: 3.0}
    assert by_number[fine.number].state == TrialState.COMPLETE
    assert by_number[fine.number].intermediate_values == {0: 0.95, 1: 0.75, 2: 0.55, 3: 0.45}
    # The pruned trials count against n_trials: the study is done.
    assert worker.claim() is None
    body = summary(client, name)
    assert body["state"] == "done" and body["finished"] == 5
    assert body["counts"]["pruned"] == 2 and body["counts"]["complete"] == 3
    # A pruned trial's reports are over: anything further is refused.
    assert worker.report(bad.trial_id, 1, 4.0).status_code == 409


def test_complete_stores_value_and_accuracy_fail_stores_reason(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("results")
    create_study(client, name, n_trials=2)
    worker = ScriptedWorker(client, "w-results", name)
    done, failed = _claimed(worker), _claimed(worker)
    assert worker.report(done.trial_id, 0, 0.7, val_accuracy=0.6).status_code == 200
    r = worker.complete(done.trial_id, 0.42, val_accuracy=0.9)
    assert r.status_code == 200 and r.json() == {"trial_id": done.trial_id, "state": "complete"}
    r = worker.fail(failed.trial_id, "CUDA out of memory")
    assert r.status_code == 200 and r.json() == {"trial_id": failed.trial_id, "state": "fail"}

    study = _load(shared_server, name)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.42
    assert study.trials[0].user_attrs["val_accuracy"] == 0.9
    assert study.trials[1].state == TrialState.FAIL
    assert study.trials[1].user_attrs["fail_reason"] == "CUDA out of memory"
    listed = trials(client, name)
    assert listed[1]["fail_reason"] == "CUDA out of memory" and listed[1]["state"] == "fail"
    # A failed trial without retry is replaced: the budget counts finished trials.
    replacement = _claimed(worker)
    assert replacement.number == 2 and replacement.body["resume"] is None


def test_unknown_study_or_trial_is_404(client: httpx.Client) -> None:
    worker = ScriptedWorker(client, "w-404", "no-such-study")
    r = client.post(f"{API}/trials/claim", json={"worker_id": "w", "study": "no-such-study"})
    assert r.status_code == 404 and "no-such-study" in r.json()["detail"]
    missing = 987_654_321
    for response in (
        worker.report(missing, 0, 1.0),
        worker.heartbeat(missing),
        worker.complete(missing, 1.0),
        worker.fail(missing, "x"),
        client.get(f"{API}/trials/{missing}/checkpoint"),
        client.put(f"{API}/trials/{missing}/checkpoint?epoch=0", content=b"x"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["detail"]
    for method, path in (
        ("GET", ""),
        ("GET", "/best"),
        ("GET", "/trials"),
        ("POST", "/stop"),
        ("DELETE", ""),
        ("GET", "/trials/0/weights"),
    ):
        r = client.request(method, f"{API}/studies/no-such-study{path}")
        assert r.status_code == 404, (method, path, r.text)


def test_messages_for_a_finished_trial_are_409_and_change_nothing(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("finished")
    create_study(client, name, n_trials=2)
    worker = ScriptedWorker(client, "w-finished", name)
    complete, failed = _claimed(worker), _claimed(worker)
    assert worker.run(complete, [0.9, 0.8]) == "complete"
    assert worker.report(failed.trial_id, 0, 2.0).status_code == 200
    assert worker.fail(failed.trial_id, "bad node").status_code == 200
    for trial in (complete, failed):
        for response in (
            worker.report(trial.trial_id, 2, 0.1),
            worker.heartbeat(trial.trial_id),
            worker.fail(trial.trial_id, "again"),
        ):
            assert response.status_code == 409, response.text
            assert "lease has ended" in response.json()["detail"]
    assert worker.complete(failed.trial_id, 0.1).status_code == 409
    study = _load(shared_server, name)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.8
    assert study.trials[0].intermediate_values == {0: 0.9, 1: 0.8}
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].value is None
    assert study.trials[1].intermediate_values == {0: 2.0}
    assert study.trials[1].user_attrs["fail_reason"] == "bad node"


BAD_REPORTS = [
    b'{"epoch": 1, "val_loss": NaN}',
    b'{"epoch": 1, "val_loss": Infinity}',
    b'{"epoch": 1, "val_loss": -Infinity}',
    b'{"epoch": 1, "val_loss": 1e999}',
    b'{"epoch": 1, "val_loss": 0.5, "val_accuracy": NaN}',
    b'{"epoch": 1, "val_loss": 0.5, "val_accuracy": 1.5}',
    b'{"epoch": -1, "val_loss": 0.5}',
    b'{"epoch": 1, "val_loss": "low"}',
    b'{"epoch": 1}',
    b'{"epoch": 1, "val_loss": 0.5, "extra": 1}',
]
BAD_COMPLETES = [
    b'{"val_loss": NaN}',
    b'{"val_loss": -Infinity}',
    b'{"val_loss": 0.5, "val_accuracy": 2}',
    b"{}",
]


def test_bad_values_are_422_and_store_nothing(client: httpx.Client, shared_server: Server) -> None:
    name = unique("badvalue")
    create_study(client, name, n_trials=1)
    worker = ScriptedWorker(client, "w-badvalue", name)
    trial = _claimed(worker)
    assert worker.report(trial.trial_id, 0, 1.0).status_code == 200
    for action, bodies in (("report", BAD_REPORTS), ("complete", BAD_COMPLETES)):
        for raw in bodies:
            r = client.post(
                f"{API}/trials/{trial.trial_id}/{action}",
                content=raw,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 422, (raw, r.text)
            assert r.json()["field"] in {"val_loss", "val_accuracy", "epoch", "extra"}, r.text
    [stored] = _load(shared_server, name).trials
    assert stored.state == TrialState.RUNNING
    assert stored.intermediate_values == {0: 1.0}
    assert "val_accuracy" not in stored.user_attrs


def test_epochs_must_come_in_order_and_repeats_are_harmless(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("order")
    create_study(client, name, n_trials=1)
    worker = ScriptedWorker(client, "w-order", name)
    trial = _claimed(worker)
    r = worker.report(trial.trial_id, 1, 1.0)  # epoch 0 first
    assert r.status_code == 422 and r.json()["field"] == "epoch"
    assert "expected epoch 0" in r.json()["detail"]
    first = worker.report(trial.trial_id, 0, 1.0)
    again = worker.report(trial.trial_id, 0, 1.0)
    changed = worker.report(trial.trial_id, 0, 0.1)  # a retried report is never re-applied
    assert first.status_code == again.status_code == changed.status_code == 200
    assert first.json() == again.json() == changed.json() == {"prune": False, "pause": False}
    assert worker.report(trial.trial_id, 2, 1.0).status_code == 422  # a gap
    assert worker.report(trial.trial_id, 1, 0.9).status_code == 200
    [stored] = _load(shared_server, name).trials
    assert stored.intermediate_values == {0: 1.0, 1: 0.9}

    done = worker.complete(trial.trial_id, 0.9, val_accuracy=0.7)
    again = worker.complete(trial.trial_id, 0.9, val_accuracy=0.7)
    assert done.status_code == again.status_code == 200 and done.json() == again.json()
    [stored] = _load(shared_server, name).trials
    assert stored.state == TrialState.COMPLETE and stored.value == 0.9


def test_oversized_json_bodies_are_413(client: httpx.Client, shared_server: Server) -> None:
    name = unique("huge")
    create_study(client, name, n_trials=1)
    worker = ScriptedWorker(client, "w-huge", name)
    trial = _claimed(worker)
    padding = " " * (2 << 20)
    body = ('{"epoch": 0, "val_loss": 1.0,' + padding + '"val_accuracy": 0.5}').encode()
    r = client.post(
        f"{API}/trials/{trial.trial_id}/report",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413

    def chunks():  # no Content-Length: the server has to count
        yield b'{"epoch": 0, "val_loss": 1.0,'
        for _ in range(2048):
            yield b" " * 1024
        yield b'"val_accuracy": 0.5}'

    r = client.post(
        f"{API}/trials/{trial.trial_id}/report",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    r = client.post(
        f"{API}/studies",
        content=b'{"name": "huge-spec",' + padding.encode() + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    [stored] = _load(shared_server, name).trials
    assert stored.intermediate_values == {} and stored.state == TrialState.RUNNING
    assert worker.report(trial.trial_id, 0, 1.0).status_code == 200  # the trial is fine


def test_summary_best_and_trials(client: httpx.Client, shared_server: Server) -> None:
    name = unique("summary")
    create_study(
        client, name, n_trials=3, sampler={"name": "random", "seed": 7}, pruner={"name": "none"}
    )
    assert summary(client, name)["state"] == "running"
    worker = ScriptedWorker(client, "w-summary", name)
    baseline, better, worse = (_claimed(worker) for _ in range(3))
    assert worker.run(baseline, [1.2, 1.0], accuracy=0.5) == "complete"
    assert worker.run(better, [0.8, 0.5], accuracy=0.8) == "complete"
    assert summary(client, name)["state"] == "running"  # one still running
    assert worker.run(worse, [1.5, 1.25]) == "complete"

    body = summary(client, name)
    assert body["state"] == "done" and body["finished"] == 3
    assert body["counts"] == {
        "waiting": 0,
        "running": 0,
        "paused": 0,
        "complete": 3,
        "pruned": 0,
        "fail": 0,
    }
    assert body["best"]["number"] == better.number and body["best"]["val_loss"] == 0.5
    assert body["baseline"]["number"] == 0 and body["baseline"]["val_loss"] == 1.0
    assert body["baseline"]["is_baseline"] is True
    assert body["improvement_over_baseline_pct"] == pytest.approx(50.0)

    r = client.get(f"{API}/studies/{name}/best", params={"k": 2})
    assert r.status_code == 200, r.text
    best = r.json()
    assert [t["val_loss"] for t in best["trials"]] == [0.5, 1.0]
    top = best["trials"][0]
    assert top["number"] == better.number and top["val_accuracy"] == 0.8 and top["epochs"] == 2
    assert top["params"] == better.params and top["duration_s"] >= 0
    assert top["improvement_over_baseline_pct"] == pytest.approx(50.0)
    config = top["config"]
    assert set(config) >= {"model", "data", "training", "hparams"}
    assert config["hparams"] == {**COMMON_RECIPE, "batch_size": 64, **better.params}
    assert config["model"]["arch"] == digits_spec(name)["model"]["arch"]
    assert config["data"]["kind"] == "digits"
    assert config["training"]["epochs"] == 3
    assert best["baseline"]["number"] == 0
    assert len(client.get(f"{API}/studies/{name}/best", params={"k": 1}).json()["trials"]) == 1
    for k in (0, -1, "x"):
        assert client.get(f"{API}/studies/{name}/best", params={"k": k}).status_code == 422

    study = _load(shared_server, name)
    assert study.best_trial.number == better.number and study.best_value == 0.5

    listed = trials(client, name)
    assert [t["number"] for t in listed] == [0, 1, 2]
    assert listed[0]["is_baseline"] and not listed[1]["is_baseline"]
    for t in listed:
        assert t["worker"] == "w-summary" and t["state"] == "complete"
        assert t["retry_of"] is None and t["resumed_from_epoch"] is None
        assert t["epochs"] == 2 and len(t["intermediate_values"]) == 2
    assert listed[1]["intermediate_values"] == {"0": 0.8, "1": 0.5}
    names = [s["name"] for s in client.get(f"{API}/studies").json()]
    assert name in names


def test_claim_records_the_worker(client: httpx.Client) -> None:
    name = unique("workers")
    create_study(client, name, n_trials=1)
    worker = ScriptedWorker(client, "gpu-box-7:cuda:1", name)
    trial = worker.claim(device="cuda:1", host="gpu-box-7")
    assert trial is not None
    [listed] = trials(client, name)
    assert listed["worker"] == "gpu-box-7:cuda:1" and listed["device"] == "cuda:1"
    seen = {w["worker_id"]: w for w in client.get(f"{API}/workers").json()}
    me = seen["gpu-box-7:cuda:1"]
    assert me["study"] == name and me["trial_number"] == 0 and me["host"] == "gpu-box-7"
    assert worker.run(trial, [0.5]) == "complete"
    seen = {w["worker_id"]: w for w in client.get(f"{API}/workers").json()}
    assert seen["gpu-box-7:cuda:1"]["trial_number"] is None


def test_stop_hands_out_nothing_more(client: httpx.Client, shared_server: Server) -> None:
    name = unique("stop")
    create_study(client, name, n_trials=10)
    worker = ScriptedWorker(client, "w-stop", name)
    running = _claimed(worker)
    r = client.post(f"{API}/studies/{name}/stop")
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    assert worker.claim() is None
    assert worker.run(running, [0.7]) == "complete"  # a running trial may finish
    assert worker.claim() is None
    assert summary(client, name)["state"] == "stopped"
    study = _load(shared_server, name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_delete_removes_the_study(client: httpx.Client, shared_server: Server) -> None:
    name = unique("delete")
    create_study(client, name, n_trials=2)
    worker = ScriptedWorker(client, "w-delete", name)
    trial = _claimed(worker)
    assert worker.report(trial.trial_id, 0, 1.0).status_code == 200
    r = client.delete(f"{API}/studies/{name}")
    assert r.status_code == 204
    assert client.get(f"{API}/studies/{name}").status_code == 404
    assert client.delete(f"{API}/studies/{name}").status_code == 404
    assert worker.report(trial.trial_id, 1, 1.0).status_code == 404
    assert (
        client.post(f"{API}/trials/claim", json={"worker_id": "w", "study": name}).status_code
        == 404
    )
    assert name not in optuna.get_all_study_names(storage=shared_server.storage)
    assert name not in [s["name"] for s in client.get(f"{API}/studies").json()]
    # The name is free again.
    create_study(client, name, n_trials=1)
    assert _claimed(worker).number == 0


def test_duplicates_sent_at_once_are_harmless(client: httpx.Client, shared_server: Server) -> None:
    """A worker that timed out resends while the first request is still being handled."""
    name = unique("dupes")
    create_study(client, name, n_trials=1, pruner={"name": "none"})
    worker = ScriptedWorker(client, "w-dupes", name)
    trial = _claimed(worker)

    def at_once(send: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
        with ThreadPoolExecutor(4) as pool:
            clients = [httpx.Client(base_url=shared_server.url, timeout=60) for _ in range(4)]
            try:
                return list(pool.map(send, clients))
            finally:
                for http in clients:
                    http.close()

    reports = at_once(
        lambda http: http.post(
            f"{API}/trials/{trial.trial_id}/report", json={"epoch": 0, "val_loss": 0.6}
        )
    )
    assert [r.status_code for r in reports] == [200] * 4
    completes = at_once(
        lambda http: http.post(f"{API}/trials/{trial.trial_id}/complete", json={"val_loss": 0.6})
    )
    assert [r.status_code for r in completes] == [200] * 4, [r.text for r in completes]
    [stored] = _load(shared_server, name).trials
    assert stored.state == TrialState.COMPLETE and stored.intermediate_values == {0: 0.6}


def test_the_dashboard_shows_the_study(client: httpx.Client) -> None:
    name = unique("dashboard")
    created = create_study(client, name, n_trials=1)
    assert client.get("/dashboard").status_code == 200
    page = client.get(created["dashboard_url"])
    assert page.status_code == 200 and "<html" in page.text.lower()
    study_id = created["dashboard_url"].rsplit("/", 1)[1]
    r = client.get(f"/api/studies/{study_id}")  # the dashboard's own API, on the same storage
    assert r.status_code == 200 and r.json()["name"] == name
