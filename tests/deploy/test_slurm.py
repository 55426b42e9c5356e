"""Worker fleets on a real Slurm cluster (deploy/slurm/local-cluster.sh starts a one-node one
where none runs): a job array of CPU workers finishes a study with both array tasks' workers
in its trials, and a task cancelled mid-trial hands its trial back for the other to resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from cli.main import main
from service.keys import CHECKPOINT as CHECKPOINT_ATTR
from tests.servers import REPO, ThreadServer, digits_spec, free_port
from tests.workers import worker_env

DEPLOY = REPO / "deploy" / "slurm"


def test_the_deploy_script_is_what_the_cli_writes(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["slurm", "submit", "--workers", "8", "--time", "04:00:00", "--partition", "gpu"]
    assert main([*args, "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert script == (DEPLOY / "hpsearch-workers.sbatch").read_text()
    assert "#SBATCH --array=0-7\n" in script and "#SBATCH --gpus-per-task=1\n" in script
    assert "#SBATCH --signal=B:TERM@120\n" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_submit_without_slurm_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["slurm", "submit", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert err == "hpsearch slurm: sbatch is not installed here: run this on a Slurm login node\n"


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and any(s in done.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm() -> None:
    if _slurm_up():
        return
    if os.geteuid() == 0:
        done = subprocess.run(
            ["bash", str(DEPLOY / "local-cluster.sh")], capture_output=True, text=True, timeout=600
        )
        if done.returncode == 0 and _slurm_up():
            return
        reason = f"local-cluster.sh failed: {done.stderr.strip()[-500:]}"
    else:
        reason = "no Slurm cluster and not root to start one (deploy/slurm/local-cluster.sh)"
    if os.environ.get("CI"):
        raise RuntimeError(reason)
    pytest.skip(reason)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(f"sqlite:///{tmp_path / 'hpsearch.db'}", tmp_path / "data", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """The jobs a test submitted: cancelled when it ends, so that a failed test leaves no
    workers running beside the rest of the suite."""
    submitted: list[str] = []
    yield submitted
    for job in submitted:
        subprocess.run(["scancel", job], capture_output=True, check=False)


def _submit(server: ThreadServer, tmp_path: Path, jobs: list[str], *flags: str) -> str:
    """`hpsearch slurm submit` of CPU workers that run this checkout's code."""
    env = worker_env(HPSEARCH_COMMAND=f"{sys.executable} -m cli.main")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "slurm",
            "submit",
            "--server",
            server.url,
            "--gpus-per-worker",
            "0",
            "--output",
            str(tmp_path / "job-%A_%a.out"),
            *flags,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    assert job.isdigit(), done.stdout
    jobs.append(job)
    return job


def _wait(condition: Callable[[], Any], timeout: float, what: str, logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    outputs = "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("job-*.out")))
    raise AssertionError(f"no {what} in {timeout} s; job output:\n{outputs}")


def _job_done(job: str) -> bool:
    done = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
    return done.returncode == 0 and not done.stdout.strip()


def _trials(server: ThreadServer, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=server.storage).trials


@pytest.mark.slow
def test_a_job_array_finishes_a_study_with_both_tasks(
    slurm: None, server: ThreadServer, jobs: list[str], tmp_path: Path
) -> None:
    spec = digits_spec("slurm-array", n_trials=4, training={"epochs": 2, "seed": 0})
    assert httpx.post(f"{server.url}/api/v1/studies", json=spec).status_code == 201
    job = _submit(server, tmp_path, jobs, "--workers", "2", "--study", "slurm-array")
    _wait(lambda: _job_done(job), 240, "end of the job", tmp_path)
    trials = _trials(server, "slurm-array")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    tasks = {t.user_attrs["worker"].split("-")[1] for t in trials}
    assert tasks == {f"{job}_0", f"{job}_1"}, [t.user_attrs["worker"] for t in trials]


@pytest.mark.slow
def test_a_cancelled_task_hands_its_trial_to_the_other(
    slurm: None, server: ThreadServer, jobs: list[str], tmp_path: Path
) -> None:
    spec = digits_spec(
        "slurm-cancel", n_trials=2, training={"epochs": 5, "seed": 0}, pruner={"name": "none"}
    )
    assert httpx.post(f"{server.url}/api/v1/studies", json=spec).status_code == 201
    job = _submit(server, tmp_path, jobs, "--workers", "2", "--study", "slurm-cancel")

    def checkpointed() -> optuna.trial.FrozenTrial | None:
        return next(
            (
                t
                for t in _trials(server, "slurm-cancel")
                if t.state == TrialState.RUNNING and CHECKPOINT_ATTR in t.system_attrs
            ),
            None,
        )

    trial = _wait(checkpointed, 180, "checkpoint", tmp_path)
    task = trial.user_attrs["worker"].split("-")[1]  # <job>_<index>
    # TERM to the batch shell only, as Slurm's --signal=B:TERM does: it must reach the worker.
    subprocess.run(["scancel", "--signal=TERM", "--batch", task], check=True)
    _wait(lambda: _job_done(job), 240, "end of the job", tmp_path)

    trials = _trials(server, "slurm-cancel")
    first = trials[trial.number]
    assert first.state == TrialState.FAIL
    assert "handed back" in first.user_attrs["fail_reason"]
    rows = httpx.get(f"{server.url}/api/v1/studies/slurm-cancel/trials").json()
    rows = rows["trials"] if isinstance(rows, dict) else rows
    [retry] = [r for r in rows if r["retry_of"] == trial.number]
    assert retry["resumed_from_epoch"] >= 1
    other = f"{job}_{1 - int(task.split('_')[1])}"
    assert retry["worker"].split("-")[1] == other
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
