"""`hpsearch slurm submit`: write the batch script of a job array of workers and submit it.

The script is deploy/slurm/hpsearch-workers.sbatch with the flags as #SBATCH lines. The server
URL and token reach the job through the environment (sbatch exports it), never the script,
which Slurm keeps on disk."""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Callable

from cli.errors import CliError

# What runs in each array task. The worker runs in the background so that this shell can
# forward Slurm's TERM (the --signal warning before the time limit, scancel, preemption): the
# worker hands its trial back to the server, where another worker resumes it, then exits.
BODY = """\
set -uo pipefail
: "${HPSEARCH_SERVER:?set HPSEARCH_SERVER to the server URL}"
read -ra hpsearch <<< "${HPSEARCH_COMMAND:-hpsearch}"
# One worker per GPU that Slurm allocated (CUDA_VISIBLE_DEVICES); none allocated: the CPU.
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then device=(--gpus all); else device=(--device cpu); fi
"${hpsearch[@]}" worker --exit-when-idle "${device[@]}" "$@" &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM INT
status=0
while kill -0 "$worker" 2>/dev/null; do
  wait "$worker" || status=$?  # a trapped signal ends the wait early: wait again
done
exit "$status"
"""


def render(args: argparse.Namespace) -> str:
    lines = ["#!/usr/bin/env bash", "# hpsearch workers: one per array task, each on its GPUs"]
    options = [
        ("job-name", args.job_name),
        ("array", f"0-{args.workers - 1}"),
        ("ntasks", "1"),
        ("cpus-per-task", args.cpus_per_worker),
        ("gpus-per-task", args.gpus_per_worker or None),
        ("time", args.time),
        ("partition", args.partition),
        ("account", args.account),
        ("signal", f"B:TERM@{args.grace}"),
        ("output", args.output),
    ]
    lines += [f"#SBATCH --{name}={value}" for name, value in options if value is not None]
    lines.append("#SBATCH --requeue")
    return "\n".join(lines) + "\n" + BODY


def run(args: argparse.Namespace) -> int:
    script = render(args)
    if args.dry_run:
        print(script, end="")
        return 0
    extra = ["--study", args.study] if args.study else []
    env = {**os.environ, "HPSEARCH_SERVER": args.server}
    if args.token:
        env["HPSEARCH_TOKEN"] = args.token
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as file:
        file.write(script)
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", file.name, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise CliError("sbatch is not installed here: run this on a Slurm login node") from None
    except subprocess.TimeoutExpired:
        raise CliError("sbatch did not answer in 120 s") from None
    finally:
        os.unlink(file.name)  # sbatch keeps its own copy
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or ["no reason given"]
        raise CliError(f"sbatch refused the job: {reason[0]}")
    print(done.stdout.strip().split(";")[0])  # --parsable: jobid[;cluster]
    return 0


def add_parser(
    sub: argparse._SubParsersAction, client_flags: Callable, positive: Callable[[str], int]
) -> None:
    slurm = sub.add_parser("slurm", help="run a fleet of workers on a Slurm cluster")
    actions = slurm.add_subparsers(dest="slurm_command", required=True)
    submit = actions.add_parser("submit", help="submit a job array of workers (prints the job id)")
    client_flags(submit)
    submit.add_argument("--workers", type=positive, default=1, help="array tasks (one worker)")
    submit.add_argument("--gpus-per-worker", type=int, default=1, help="0: CPU workers")
    submit.add_argument("--cpus-per-worker", type=positive)
    submit.add_argument("--time", help="time limit, e.g. 04:00:00")
    submit.add_argument("--partition")
    submit.add_argument("--account")
    submit.add_argument(
        "--grace",
        type=positive,
        default=120,
        help="seconds before the time limit when the worker hands back",
    )
    submit.add_argument("--job-name", default="hpsearch-worker")
    submit.add_argument("--output", default="hpsearch-worker-%A_%a.out")
    submit.add_argument("--study", help="only run trials of this study")
    submit.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    submit.set_defaults(run="cli.slurm:run")


__all__ = ["BODY", "add_parser", "render", "run"]
