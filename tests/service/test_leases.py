"""Leases: a trial whose worker goes silent is failed within the grace period and re-queued
with the same params; late messages from the dead worker get 409 and change nothing; a trial
handed back is re-queued at once; the retry limit holds. Also the Prometheus metrics of such a
run. The server here has a 1 s heartbeat interval, a 5 s grace and one retry per trial
(sub-second leases work, but a loaded CI machine delays a heartbeat by more than that)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from tests.scripted import API, ScriptedWorker, create_study, trials, unique
from tests.servers import Server
from tests.service.conftest import ServerStarter, StorageMaker

GRACE = 5  # a live heartbeat must never look stale, even on a loaded 2-core CI machine
HEARTBEAT = 1


@pytest.fixture(scope="module")
def lease_server(new_storage: StorageMaker, start_server: ServerStarter) -> Server:
    return start_server(
        new_storage(), heartbeat_interval=HEARTBEAT, lease_grace=GRACE, max_retries=1
    )


@pytest.fixture
def http(lease_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lease_server.url, timeout=60) as client:
        yield client


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `condition()`; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def _states(http: httpx.Client, study: str) -> list[str]:
    return [t["state"] for t in trials(http, study)]


def test_silent_worker_is_failed_and_its_trial_requeued(
    http: httpx.Client, lease_server: Server
) -> None:
    name = unique("silent")
    create_study(http, name, n_trials=2)
    dead = ScriptedWorker(http, "dead-worker", name)
    lost = dead.claim()
    assert lost is not None and lost.body["heartbeat_interval"] == HEARTBEAT
    assert dead.report(lost.trial_id, 0, 1.5).status_code == 200
    # Meanwhile another worker holds its lease with heartbeats alone.
    beating = ScriptedWorker(http, "beating-worker", name)
    kept = beating.claim()
    assert kept is not None

    def beat() -> bool:
        r = beating.heartbeat(kept.trial_id)
        assert r.status_code == 200, r.text
        assert r.json() == {"trial_id": kept.trial_id, "heartbeat_interval": HEARTBEAT}
        return True

    took = _wait_for(
        lambda: beat() and _states(http, name)[0] == "fail", 15, "the silent trial failed"
    )
    assert took < GRACE + 5
    study = optuna.load_study(study_name=name, storage=lease_server.storage)
    failed, running, waiting = study.trials
    assert failed.state == TrialState.FAIL and failed.intermediate_values == {0: 1.5}
    assert running.state == TrialState.RUNNING  # its heartbeats kept it
    assert waiting.state == TrialState.WAITING
    assert waiting.params == failed.params
    assert waiting.system_attrs["retry_history"] == [failed.number]

    alive = ScriptedWorker(http, "alive-worker", name)
    retry = alive.claim()
    assert retry is not None
    assert retry.number == waiting.number and retry.params == lost.params
    assert retry.body["is_baseline"] is True  # it retries the baseline
    listed = trials(http, name)[retry.number]
    assert listed["retry_of"] == lost.number and listed["worker"] == "alive-worker"
    assert listed["resumed_from_epoch"] is None  # no checkpoint to resume from

    # The dead worker wakes up: everything it sends is refused and changes nothing.
    assert alive.heartbeat(retry.trial_id).status_code == 200
    for response in (
        dead.report(lost.trial_id, 1, 0.1),
        dead.heartbeat(lost.trial_id),
        dead.complete(lost.trial_id, 0.1),
        dead.fail(lost.trial_id, "late"),
        http.put(f"{API}/trials/{lost.trial_id}/checkpoint?epoch=0", content=b"late"),
    ):
        assert response.status_code == 409, response.text
        assert "lease has ended" in response.json()["detail"]
    study = optuna.load_study(study_name=name, storage=lease_server.storage)
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].value is None
    assert study.trials[0].intermediate_values == {0: 1.5}
    assert "fail_reason" not in study.trials[0].user_attrs
    assert study.trials[retry.number].state == TrialState.RUNNING
    assert study.trials[retry.number].intermediate_values == {}

    # The retry's worker dies too: with one retry allowed, it is not queued again.
    _wait_for(
        lambda: beat() and _states(http, name)[retry.number] == "fail", 15, "the retry failed"
    )
    for _ in range(4):  # a few more sweeps: still nothing re-queued
        beat()
        time.sleep(0.25)
    study = optuna.load_study(study_name=name, storage=lease_server.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    assert beating.run(kept, [0.5]) == "complete"
    # The lost trial's budget is not spent: a new trial is sampled in its place.
    fresh = alive.claim()
    assert fresh is not None and fresh.number == 3 and not fresh.body["is_baseline"]
    assert trials(http, name)[3]["retry_of"] is None


def test_handing_back_requeues_at_once_within_the_retry_limit(
    http: httpx.Client, lease_server: Server
) -> None:
    name = unique("handback")
    create_study(http, name, n_trials=1, baseline=False)
    worker = ScriptedWorker(http, "stopping-worker", name)
    first = worker.claim()
    assert first is not None
    assert worker.report(first.trial_id, 0, 1.0).status_code == 200
    r = worker.fail(first.trial_id, "SIGTERM", retry=True)
    assert r.status_code == 200 and r.json()["state"] == "fail"
    study = optuna.load_study(study_name=name, storage=lease_server.storage)  # no waiting
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == first.params

    second = worker.claim()
    assert second is not None and second.number == 1 and second.params == first.params
    listed = trials(http, name)[1]
    assert listed["retry_of"] == 0 and listed["fail_reason"] is None  # not its predecessor's
    assert worker.heartbeat(second.trial_id).status_code == 200
    assert worker.fail(second.trial_id, "SIGTERM again", retry=True).status_code == 200
    study = optuna.load_study(study_name=name, storage=lease_server.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # limit: 1

    third = worker.claim()
    assert third is not None and third.number == 2
    assert worker.run(third, [0.4]) == "complete"
    assert worker.claim() is None  # one trial asked for, one finished


def test_a_trial_handed_out_by_a_dying_server_is_recovered(
    http: httpx.Client, lease_server: Server
) -> None:
    """A server killed between popping a trial and recording its first heartbeat leaves a
    running trial with no lease at all; the sweep gives it one, so it fails and is retried."""
    name = unique("orphan")
    create_study(http, name, n_trials=1)
    study = optuna.load_study(study_name=name, storage=lease_server.storage)
    orphan = study.ask()  # pops the baseline like a claim, with no heartbeat recorded
    assert orphan.number == 0
    _wait_for(lambda: _states(http, name)[0] == "fail", 20, "the orphan failed")
    worker = ScriptedWorker(http, "rescuer", name)
    retry = worker.claim()
    assert retry is not None and retry.body["is_baseline"] and retry.number == 1
    assert trials(http, name)[1]["retry_of"] == 0


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{{{wanted}}} in\n{text}")


def test_metrics_after_a_scripted_run(http: httpx.Client) -> None:
    name = unique("metrics")
    create_study(http, name, n_trials=3, pruner={"name": "none"})
    worker = ScriptedWorker(http, "metrics-worker", name)
    assert worker.run(worker.claim(), [1.0, 0.9]) == "complete"  # 1 claim, 2 reports
    handed_back = worker.claim()  # 1 claim, 1 report, re-queued
    assert worker.report(handed_back.trial_id, 0, 1.0).status_code == 200
    assert worker.fail(handed_back.trial_id, "stopping", retry=True).status_code == 200
    lost = worker.claim()  # the retry: 1 claim, then silence
    assert lost is not None and lost.params == handed_back.params
    _wait_for(lambda: _states(http, name)[2] == "fail", 15, "the silent retry failed")
    assert worker.run(worker.claim(), [0.8]) == "complete"  # 1 claim, 1 report
    running = worker.claim()  # 1 claim, still running
    assert running is not None

    text = http.get("/metrics").text
    assert _metric(text, "hpsearch_claims_total", study=name) == 5
    assert _metric(text, "hpsearch_reports_total", study=name) == 4
    assert _metric(text, "hpsearch_retries_total", study=name) == 1
    assert _metric(text, "hpsearch_stale_trials_failed_total", study=name) == 1
    expected = {"complete": 2, "fail": 2, "running": 1, "waiting": 0, "pruned": 0}
    for state, count in expected.items():
        assert _metric(text, "hpsearch_trials", study=name, state=state) == count
    assert _metric(text, "hpsearch_connected_workers") >= 1
    assert (
        _metric(text, "hpsearch_request_seconds_count", method="POST", route="/api/v1/trials/claim")
        >= 5
    )
    assert (
        _metric(
            text,
            "hpsearch_request_seconds_count",
            method="POST",
            route="/api/v1/trials/{trial_id}/report",
        )
        >= 4
    )
    assert (
        _metric(
            text,
            "hpsearch_request_seconds_bucket",
            method="POST",
            route="/api/v1/trials/{trial_id}/report",
            le="+Inf",
        )
        >= 4
    )


def test_paused_trials_keep_their_lease_and_are_promoted(http: httpx.Client) -> None:
    """asha: a paused trial holds no worker and sends no heartbeat; the server keeps its lease
    through every sweep, so it is not failed as stale and is promoted later."""
    name = unique("lease-asha")
    create_study(
        http,
        name,
        baseline=False,
        training={"epochs": 4, "seed": 0},
        pruner={"name": "asha", "reduction_factor": 3, "min_resource": 1, "mode": "promotion"},
        n_trials=3,
    )
    worker = ScriptedWorker(http, "w-lease-asha", name)
    paused = []
    for loss in (0.5, 1.0, 2.0):
        trial = worker.next_trial()
        assert worker.report(trial.trial_id, 0, loss).json()["pause"] is True
        r = http.put(
            f"{API}/trials/{trial.trial_id}/checkpoint",
            params={"epoch": 0},
            content=b"state",
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 204
        assert http.post(f"{API}/trials/{trial.trial_id}/pause", json={"epoch": 0}).is_success
        paused.append(trial)
    time.sleep(GRACE + 3 * HEARTBEAT)  # stale twice over, had the server not kept the leases
    assert _states(http, name) == ["paused"] * 3
    promoted = worker.next_trial()
    assert promoted.trial_id == paused[0].trial_id and promoted.body["resume"]["epoch"] == 0

    # Its new worker dies: the promoted trial is retried from the rung's checkpoint, as any.
    _wait_for(lambda: _states(http, name)[0] == "fail", 15, "the promoted trial failed")
    retry = ScriptedWorker(http, "w-lease-asha-2", name).next_trial()
    assert retry.params == paused[0].params and retry.body["resume"]["epoch"] == 0
    assert http.get(retry.body["resume"]["checkpoint_url"]).content == b"state"
    listed = trials(http, name)[retry.number]
    assert listed["retry_of"] == paused[0].number and listed["intermediate_values"] == {"0": 0.5}
