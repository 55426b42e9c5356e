"""resume and submit --warm-start against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from tests.cli.conftest import Run, write
from tests.scripted import API, ScriptedWorker, create_study
from tests.servers import digits_spec


def test_stop_then_resume(cli: Run, api: httpx.Client) -> None:
    create_study(api, "paused", n_trials=2)
    assert cli("stop", "paused").returncode == 0
    worker = ScriptedWorker(api, "w-paused", "paused")
    assert worker.claim() is None  # 204: nothing handed out
    r = cli("resume", "paused")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("resumed study paused: trials are handed out again (0/2 trials finished)\n")
    assert api.get(f"{API}/studies/paused").json()["state"] == "running"
    assert worker.run(worker.next_trial(), [0.5]) == "complete"

    again = cli("resume", "paused")  # not stopped: nothing changes
    assert again.returncode == 0 and "1/2 trials finished" in again.stdout


def test_stop_cancel_running_hands_back(cli: Run, api: httpx.Client) -> None:
    create_study(api, "cancelled", n_trials=3)
    worker = ScriptedWorker(api, "w-cancelled", "cancelled")
    trial = worker.next_trial()
    r = cli("stop", "cancelled", "--cancel-running")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "stopped study cancelled: 1 running trial handed back; "
        "`hpsearch resume cancelled` runs them on from their last checkpoints\n"
    )
    assert worker.heartbeat(trial.trial_id).status_code == 409


def test_resume_a_done_study_says_so(cli: Run, api: httpx.Client) -> None:
    create_study(api, "finished-one", n_trials=1)
    worker = ScriptedWorker(api, "w-finished-one", "finished-one")
    assert worker.run(worker.next_trial(), [0.5]) == "complete"
    r = cli("resume", "finished-one")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "study finished-one is done: 1/1 trials finished\n"


def test_resume_unknown_study(cli: Run) -> None:
    r = cli("resume", "ghost")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "hpsearch resume: server answered 404: no study named 'ghost'\n"


def test_submit_warm_start(cli: Run, api: httpx.Client, tmp_path: Path) -> None:
    create_study(api, "warm-source", n_trials=2)
    worker = ScriptedWorker(api, "w-warm-source", "warm-source")
    assert worker.run(worker.next_trial(), [0.9, 0.8]) == "complete"  # the baseline
    best = worker.next_trial()
    assert worker.run(best, [0.5, 0.4]) == "complete"
    path = write(tmp_path / "warm.yaml", yaml.safe_dump(digits_spec("warmed", n_trials=3)))
    r = cli("submit", str(path), "--warm-start", "warm-source")
    assert r.returncode == 0, r.stderr
    study = api.get(f"{API}/studies/warmed").json()
    assert study["spec"]["warm_start"] == {"study": "warm-source", "top_k": 5, "history": True}
    trials = api.get(f"{API}/studies/warmed/trials").json()
    assert sum(t["prior"] for t in trials) == 2
    # The baseline, then the source's best configuration (its baseline is the same recipe).
    waiting = [t for t in trials if t["state"] == "waiting"]
    assert len(waiting) == 2
    warmed = ScriptedWorker(api, "w-warmed", "warmed")
    claimed = [warmed.next_trial() for _ in waiting]
    assert claimed[0].body["is_baseline"] and claimed[1].params == best.params

    r = cli("status", "warmed")
    assert r.returncode == 0, r.stderr
    assert "p prior evidence" in r.stdout


def test_submit_warm_start_from_an_unknown_study(
    cli: Run, api: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path / "cold.yaml", yaml.safe_dump(digits_spec("cold")))
    r = cli("submit", str(path), "--warm-start", "ghost")
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[1:] == [
        "  warm_start.study: no study named 'ghost' to warm-start from"
    ]
    assert api.get(f"{API}/studies/cold").status_code == 404


def test_a_preflight_error_shows_in_status_and_watch_and_resume_runs_it_again(
    cli: Run, api: httpx.Client
) -> None:
    create_study(api, "broken-data", n_trials=2)
    worker = ScriptedWorker(api, "w-broken", "broken-data")
    trial = worker.next_trial(preflight=True)
    cause = "/data/pets/train holds 1 class folder(s) ['cat']; at least 2 are needed"
    r = api.post(
        f"{API}/trials/{trial.trial_id}/preflight",
        json={"ok": False, "fault": "spec", "error": cause},
    )
    assert r.status_code == 200, r.text

    status = cli("status", "broken-data")
    assert status.returncode == 0, status.stderr
    first = status.stdout.splitlines()[0]
    assert first.startswith("study broken-data: error,") and first.endswith(cause)
    watched = cli("watch", "broken-data", "--interval", "0.1")  # an error ends it
    assert watched.returncode == 0, watched.stderr
    assert f"error: {cause}; fix it, then `hpsearch resume broken-data`" in watched.stdout

    resumed = cli("resume", "broken-data")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("resumed study broken-data: its preflight runs again")
    assert worker.next_trial(preflight=True).body["preflight"] is True
