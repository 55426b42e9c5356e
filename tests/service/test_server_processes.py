"""`hpsearch serve --workers 2` on a fresh storage: both server processes start, and concurrent
workers get every answer from them, with no connection reset and no 5xx.

Each server process creates the storage's tables when it opens it. Optuna does that check
first, create after (tables, its version row, the alembic stamp), so two processes opening a
fresh storage at once used to both create, and one failed at start-up ("UNIQUE constraint
failed: alembic_version.version_num"); uvicorn then stopped the other one too, resetting the
connections of its clients. How often two processes meet there depends on the machine, so the
servers here run with a start-up hook (a sitecustomize module) that waits a little after
finding the alembic version table empty: without the initialisation lock both processes find
it empty every time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from tests.scripted import Claimed, ScriptedWorker, create_study, unique
from tests.servers import REPO, Server, free_port, server_env

N_TRIALS = 16
N_WORKERS = 8
WIDEN_THE_RACE = """
import time

from alembic.runtime.migration import MigrationContext

_current_heads = MigrationContext.get_current_heads


def _slow_when_empty(self):
    heads = _current_heads(self)
    if not heads:  # a fresh storage: Optuna is about to stamp it
        time.sleep(1.5)
    return heads


MigrationContext.get_current_heads = _slow_when_empty
"""


@pytest.fixture
def two_processes(storage_url: str, tmp_path: Path) -> Iterator[Server]:
    """`hpsearch serve --workers 2` on the fresh storage, with the start-up hook; not started."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(WIDEN_THE_RACE)
    env = server_env()
    env["PYTHONPATH"] = f"{hooks}:{REPO}"
    server = Server(
        storage=storage_url,
        data_dir=tmp_path / "data",
        port=free_port(),
        env=env,
        args=["--workers", "2"],
    )
    yield server
    server.stop()


def _start(server: Server) -> None:
    server.start(timeout=90)
    # healthz answers once one process is up: wait for the other one's start-up too.
    deadline = time.monotonic() + 60
    log = ""
    while time.monotonic() < deadline:
        log = server.log_path.read_text(errors="replace")
        if "startup failed" in log or log.count("Application startup complete.") >= 2:
            break
        time.sleep(0.2)
    assert log.count("Application startup complete.") == 2, log[-6000:]


def _run_workers(server: Server, work: Callable[[int, list[str], threading.Lock], None]) -> str:
    """N_WORKERS threads running `work(i, errors, lock)` to their end; returns the server's
    log, once no worker reported an error."""
    errors: list[str] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=work, args=(i, errors, lock)) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "workers still running after 300 s"
    log = server.log_path.read_text(errors="replace")
    assert not errors, (errors, log[-6000:])
    return log


def _work(
    url: str,
    worker_id: str,
    study: str,
    statuses: Counter[int],
    errors: list[str],
    lock: threading.Lock,
) -> None:
    def record(response: httpx.Response) -> None:
        with lock:
            statuses[response.status_code] += 1

    try:
        with httpx.Client(base_url=url, timeout=60, event_hooks={"response": [record]}) as http:
            worker = ScriptedWorker(http, worker_id, study)
            while (trial := worker.claim()) is not None:
                loss = 1.0 + trial.number % 5 / 10
                worker.run(trial, [loss, loss * 0.9])
    except Exception as exc:  # noqa: BLE001 - reported by the test
        with lock:
            errors.append(f"{worker_id}: {exc!r}")


@pytest.mark.slow
def test_two_server_processes_on_a_fresh_storage(two_processes: Server) -> None:
    server = two_processes
    _start(server)
    name = unique("processes")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_study(
            http,
            name,
            n_trials=N_TRIALS,
            training={"epochs": 2, "seed": 0},
            sampler={"name": "random", "seed": 0},
        )
    statuses: Counter[int] = Counter()
    log = _run_workers(
        server, lambda i, errors, lock: _work(server.url, f"w{i}", name, statuses, errors, lock)
    )
    assert set(statuses) <= {200, 204}, statuses
    assert server.process is not None and server.process.poll() is None, log[-6000:]
    assert "Traceback" not in log, log[-6000:]

    study = optuna.load_study(study_name=name, storage=server.storage)
    states = Counter(t.state for t in study.trials)
    assert len(study.trials) == N_TRIALS
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == N_TRIALS, states
    assert sorted(t.number for t in study.trials) == list(range(N_TRIALS))


def _work_asha(url: str, worker_id: str, study: str, errors: list[str], lock: threading.Lock):
    """A scripted worker for the asha study: resumes promoted trials where their checkpoint
    ends, pauses when told to (checkpoint first), completes at the last epoch."""
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            worker = ScriptedWorker(http, worker_id, study)
            while True:
                r = http.post("/api/v1/trials/claim", json={"worker_id": worker_id, "study": study})
                if r.status_code == 204:
                    if r.headers.get("retry-after"):  # a running trial may make one rank
                        time.sleep(0.2)
                        continue
                    return
                trial = Claimed(r.json()["trial_id"], r.json()["number"], {}, r.json())
                resume = trial.body["resume"]
                for epoch in range(resume["epoch"] + 1 if resume else 0, ASHA_EPOCHS):
                    loss = 1.0 + (trial.number * 7 % 11) / 10 - epoch / 20
                    answer = worker.report(trial.trial_id, epoch, loss).raise_for_status().json()
                    if answer["pause"]:
                        http.put(
                            f"/api/v1/trials/{trial.trial_id}/checkpoint",
                            params={"epoch": epoch},
                            content=b"state",
                            headers={"content-type": "application/octet-stream"},
                        ).raise_for_status()
                        http.post(
                            f"/api/v1/trials/{trial.trial_id}/pause", json={"epoch": epoch}
                        ).raise_for_status()
                        break
                else:
                    worker.complete(trial.trial_id, loss).raise_for_status()
    except Exception as exc:  # noqa: BLE001 - reported by the test
        with lock:
            errors.append(f"{worker_id}: {exc!r}")


ASHA_EPOCHS = 4  # rungs after epochs 1 and 3


@pytest.mark.slow
def test_asha_budget_and_promotions_hold_across_server_processes(two_processes: Server) -> None:
    """Paused trials promoted by concurrent claims through two processes: each promoted once
    per pause, the budget of configurations exact, every curve one curve."""
    server = two_processes
    _start(server)
    name = unique("processes-asha")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_study(
            http,
            name,
            n_trials=N_TRIALS,
            baseline=False,
            training={"epochs": ASHA_EPOCHS, "seed": 0},
            sampler={"name": "random", "seed": 0},
            pruner={"name": "asha", "reduction_factor": 3, "min_resource": 1},
        )
    log = _run_workers(
        server, lambda i, errors, lock: _work_asha(server.url, f"w{i}", name, errors, lock)
    )
    assert "Traceback" not in log, log[-6000:]

    trials = optuna.load_study(study_name=name, storage=server.storage).trials
    assert len(trials) == N_TRIALS, " ".join(
        f"{t.number}:{t.state.name[:4]}:p{t.user_attrs.get('promotions')}:"
        f"e{t.user_attrs.get('paused_after_epoch')}:{len(t.intermediate_values)}"
        for t in trials
    )
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(t.user_attrs.get("promotions") for t in trials)
    assert any(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        summary = http.get(f"/api/v1/studies/{name}").json()
    assert summary["state"] == "done" and summary["counts"]["paused"] == 0
