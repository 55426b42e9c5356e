"""Worker ids name the Slurm job and array task when the worker runs inside one."""

from __future__ import annotations

import os
import socket

import pytest

from worker.supervisor import default_worker_id

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)


def test_outside_slurm_the_id_is_host_and_pid() -> None:
    base = f"{socket.gethostname()}-{os.getpid()}"
    assert default_worker_id() == base
    assert default_worker_id("cuda:1") == f"{base}-cuda1"


def test_a_plain_job_names_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert default_worker_id("cpu") == f"slurm-4242-{socket.gethostname()}-{os.getpid()}-cpu"


def test_an_array_task_names_the_array_job_and_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each array task has its own SLURM_JOB_ID; the array's id and the index are what users see.
    monkeypatch.setenv("SLURM_JOB_ID", "4245")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert default_worker_id().startswith("slurm-4243_1-")
