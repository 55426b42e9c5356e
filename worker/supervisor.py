"""Worker processes: one per GPU (--gpus), N on the CPU (--processes), or one in this process;
K trials side by side per device (--trials-per-gpu). SIGTERM and Ctrl-C stop everything
cleanly: each running trial is handed back to the server, then the processes exit."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace

from worker.client import ProtocolError, ServerUnavailable
from worker.engine import Caches
from worker.runner import Runner, WorkerConfig, WorkerStopped

logger = logging.getLogger(__name__)


class SetupError(Exception):
    """The flags ask for something this machine does not have."""


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda:0" if cuda_count() > 0 else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index >= cuda_count():
            raise SetupError(f"--device {device}: this machine has {cuda_count()} CUDA devices")
        return f"cuda:{index}"
    raise SetupError(f"--device {device}: use auto, cpu or cuda:N")


def plan_devices(device: str, gpus: str | None, processes: int | None) -> list[str]:
    """The device of each worker process to start; one entry means: run in this process."""
    if gpus is not None:
        available = cuda_count()
        if available == 0:
            raise SetupError("--gpus: no CUDA device is visible on this machine")
        if gpus == "all":
            ids = list(range(available))
        else:
            try:
                ids = [int(part) for part in gpus.split(",") if part.strip()]
            except ValueError:
                raise SetupError(f"--gpus {gpus}: use all or a list like 0,1") from None
            missing = [i for i in ids if i >= available]
            if missing or not ids:
                raise SetupError(f"--gpus {gpus}: this machine has GPUs 0..{available - 1}")
        return [f"cuda:{i}" for i in ids]
    return [resolve_device(device)] * (processes or 1)


def child_command(argv: Sequence[str], device: str, worker_id: str, threads: int) -> list[str]:
    """This command line, minus the fan-out flags, pinned to one device."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--gpus", "--processes", "--device", "--worker-id", "--threads"):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return [
        sys.executable,
        "-m",
        "cli.main",
        *kept,
        "--device",
        device,
        "--worker-id",
        worker_id,
        "--threads",
        str(threads),
    ]


def run_children(commands: list[list[str]]) -> int:
    children = [subprocess.Popen(cmd) for cmd in commands]
    logger.info("started %d worker processes", len(children))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs, default=0)


def run_in_process(config: WorkerConfig, trials_per_device: int, threads: int | None) -> int:
    if config.device == "cpu" and threads:
        import torch

        torch.set_num_threads(threads)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait
        logger.info("stopping: handing back running trials (signal %d)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    caches = Caches()
    if trials_per_device == 1:
        return _guarded(Runner(config, caches, stop))
    runners = [
        Runner(replace(config, worker_id=f"{config.worker_id}-t{k}"), caches, stop)
        for k in range(trials_per_device)
    ]
    codes: list[int] = []
    threads_ = [threading.Thread(target=lambda r=r: codes.append(_guarded(r))) for r in runners]
    for t in threads_:
        t.start()
    for t in threads_:
        while t.is_alive():
            t.join(timeout=0.5)  # wake up for signals
    return max(codes, default=0)


def _guarded(runner: Runner) -> int:
    try:
        return runner.run()
    except (WorkerStopped, ProtocolError, ServerUnavailable) as exc:
        logger.error("worker %s stops: %s", runner.config.worker_id, exc)
        return 3


def default_worker_id(device: str | None = None) -> str:
    """host-pid, plus the device when there is one: unique per process and readable. Inside a
    Slurm job it starts with slurm-<job>[_<array task>], so `hpsearch workers` names the job."""
    base = f"{socket.gethostname()}-{os.getpid()}"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        base = f"slurm-{job}{f'_{task}' if task else ''}-{base}"
    return f"{base}-{device.replace(':', '')}" if device else base
