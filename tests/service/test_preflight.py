"""The study preflight over HTTP, with scripted workers: one flagged trial at a time until it
passes; a spec fault puts the study in error (claims get 204, `resume` runs it again); a fault
of a worker's machine makes that worker skip the study while others run it; a lost lease of the
flagged trial frees it. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.scripted import API, Claimed, ScriptedWorker, create_study, summary, trials, unique
from tests.servers import Server
from tests.service.conftest import ServerStarter, StorageMaker

DATA = {
    "classes": ["cat", "dog"],
    "train_images": 40,
    "val_images": 10,
    "test_images": 5,
    "skipped_images": 1,
}


def preflight(http: httpx.Client, trial: Claimed, **result: Any) -> httpx.Response:
    return http.post(f"{API}/trials/{trial.trial_id}/preflight", json=result)


def workers(http: httpx.Client) -> dict[str, dict[str, Any]]:
    r = http.get(f"{API}/workers")
    assert r.status_code == 200, r.text
    return {w["worker_id"]: w for w in r.json()}


def test_one_flagged_trial_until_it_passes_then_the_data_is_shown(client: httpx.Client) -> None:
    name = unique("preflight-ok")
    created = create_study(client, name)
    assert created["preflight"] == "pending" and created["data"] is None
    first = ScriptedWorker(client, unique("w"), name)
    second = ScriptedWorker(client, unique("w"), name)
    trial = first.next_trial(preflight=True)
    assert trial.body["preflight"] is True
    assert second.claim(preflight=True) is None  # only one preflight in flight
    # ... and the 204 says work is coming, so a worker that exits when idle stays.
    wait = client.post(
        f"{API}/trials/claim",
        json={"worker_id": second.worker_id, "study": name, "preflight": True},
    )
    assert wait.status_code == 204 and int(wait.headers["retry-after"]) >= 1

    r = preflight(client, trial, ok=True, data=DATA)
    assert r.status_code == 200, r.text
    assert r.json() == {"study": name, "outcome": "passed"}
    assert preflight(client, trial, ok=True, data=DATA).json()["outcome"] == "passed"  # again
    shown = summary(client, name)
    assert shown["preflight"] == "passed" and shown["data"] == DATA
    assert shown["state"] == "running" and shown["error"] is None

    other = second.next_trial(preflight=True)
    assert other.body["preflight"] is False
    assert first.run(trial, [1.0, 0.9, 0.8]) == "complete"


def test_a_spec_fault_puts_the_study_in_error_until_resumed(client: httpx.Client) -> None:
    name = unique("preflight-spec")
    create_study(client, name)
    worker = ScriptedWorker(client, unique("w"), name)
    trial = worker.next_trial(preflight=True)
    cause = "/data/pets holds 1 class folder(s) ['cat']; at least 2 are needed"
    r = preflight(client, trial, ok=False, fault="spec", error=cause)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "error"

    shown = summary(client, name)
    assert shown["state"] == "error" and shown["error"] == cause
    assert cause in shown["state_reason"]
    (failed,) = trials(client, name)
    assert failed["state"] == "fail" and cause in failed["fail_reason"]
    assert shown["counts"]["waiting"] == 0  # not retried
    # nothing is handed out: to preflight workers, to others, named or not
    assert worker.claim(preflight=True) is None
    assert worker.claim() is None
    listed = client.get(f"{API}/studies", params={"state": "error"}).json()
    assert name in [s["name"] for s in listed]
    running = client.get(f"{API}/studies", params={"state": "running"}).json()
    assert name not in [s["name"] for s in running]
    assert preflight(client, trial, ok=True, data=DATA).status_code == 409  # it has ended

    r = client.post(f"{API}/studies/{name}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "running" and r.json()["error"] is None
    assert r.json()["preflight"] == "pending"
    again = worker.next_trial(preflight=True)
    assert again.body["preflight"] is True  # the preflight runs again
    assert preflight(client, again, ok=True, data=DATA).json()["outcome"] == "passed"


def test_a_worker_fault_skips_the_study_for_that_worker_only(client: httpx.Client) -> None:
    name = unique("preflight-worker")
    create_study(client, name)
    lacking = ScriptedWorker(client, unique("w-lacking"), name)
    able = ScriptedWorker(client, unique("w-able"), name)
    trial = lacking.next_trial(preflight=True)
    why = "data root /data/pets is not a directory on this machine"
    r = preflight(client, trial, ok=False, fault="worker", error=why)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "skipped"
    assert workers(client)[lacking.worker_id]["skipped_studies"] == {name: why}
    shown = summary(client, name)
    assert shown["state"] == "running" and shown["counts"]["waiting"] == 1  # handed back

    assert lacking.claim(preflight=True, exclude=[name]) is None
    retried = able.next_trial(preflight=True)
    assert retried.body["preflight"] is True and retried.params == trial.params
    assert preflight(client, retried, ok=True, data=DATA).json()["outcome"] == "passed"


def test_claims_without_the_preflight_flag_are_served_as_before(client: httpx.Client) -> None:
    name = unique("preflight-old")
    create_study(client, name)
    old = ScriptedWorker(client, unique("w"), name)
    first, second = old.next_trial(), old.next_trial()
    assert first.body["preflight"] is False and second.body["preflight"] is False
    assert preflight(client, first, ok=True, data=DATA).status_code == 409  # not a preflight


def test_a_result_must_be_complete(client: httpx.Client) -> None:
    name = unique("preflight-422")
    create_study(client, name)
    trial = ScriptedWorker(client, unique("w"), name).next_trial(preflight=True)
    assert preflight(client, trial, ok=True).status_code == 422
    assert preflight(client, trial, ok=False, fault="spec").status_code == 422
    assert preflight(client, trial, ok=False, fault="disk", error="x").status_code == 422
    assert summary(client, name)["preflight"] == "pending"


@pytest.fixture(scope="module")
def lease_http(new_storage: StorageMaker, start_server: ServerStarter) -> Iterator[httpx.Client]:
    server: Server = start_server(new_storage(), heartbeat_interval=1, lease_grace=3)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_a_lost_lease_of_the_flagged_trial_frees_it(lease_http: httpx.Client) -> None:
    name = unique("preflight-lease")
    create_study(lease_http, name)
    gone = ScriptedWorker(lease_http, unique("w-gone"), name)
    other = ScriptedWorker(lease_http, unique("w-other"), name)
    gone.next_trial(preflight=True)  # and then silence
    assert other.claim(preflight=True) is None
    deadline = time.monotonic() + 30
    while (trial := other.claim(preflight=True)) is None:
        assert time.monotonic() < deadline, "the lost preflight was never freed"
        time.sleep(0.5)
    assert trial.body["preflight"] is True
