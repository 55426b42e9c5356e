"""`hpsearch worker`: turn the flags into worker processes."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from cli.errors import CliError


def labels(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """--label KEY=VALUE flags (already split by the parser) as a mapping. Raises CliError."""
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise CliError(f"--label {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from worker.client import ProtocolError, ServerUnavailable
    from worker.runner import WorkerConfig
    from worker.supervisor import (
        SetupError,
        child_command,
        default_worker_id,
        plan_devices,
        run_children,
        run_in_process,
    )

    worker_labels = labels(args.label or [])  # before any process starts
    try:
        devices = plan_devices(args.device, args.gpus, args.processes)
    except SetupError as exc:
        raise CliError(str(exc)) from None
    cores = os.cpu_count() or 1
    if len(devices) > 1:
        threads = args.threads or max(1, cores // len(devices))
        base = args.worker_id or default_worker_id()
        commands = [
            child_command(sys.argv[1:], device, f"{base}-{i}-{device.replace(':', '')}", threads)
            for i, device in enumerate(devices)
        ]
        return run_children(commands)
    device = devices[0]
    config = WorkerConfig(
        server=args.server,
        token=args.token,
        worker_id=args.worker_id or default_worker_id(device),
        host=socket.gethostname(),
        device=device,
        study=args.study,
        max_trials=args.max_trials,
        exit_when_idle=args.exit_when_idle,
        labels=worker_labels,
    )
    try:
        return run_in_process(config, args.trials_per_gpu, args.threads)
    except ServerUnavailable as exc:
        raise CliError(f"cannot reach the server at {args.server}: {exc}") from None
    except ProtocolError as exc:
        raise CliError(str(exc)) from None
