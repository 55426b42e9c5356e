"""The user commands: submit, status, watch, best, workers, extend, stop, resume, delete.

Each takes the parsed arguments and returns the exit status; every failure a person can act on
is a `CliError` (one line on stderr, no traceback). Only httpx, pyyaml and the standard library
are imported, so a laptop with `pip install hpsearch` runs them."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from cli import render
from cli import watch as live
from cli.client import ApiError, Client
from cli.errors import CliError

logger = logging.getLogger(__name__)
Command = Callable[[argparse.Namespace], int]


def _command(func: Command) -> Command:
    """An answer without the fields this CLI reads (another program on that port, a server of
    another version) is one line too, not a traceback; --log-level DEBUG shows the details."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            logger.debug("unexpected answer", exc_info=True)
            raise CliError(
                f"unexpected answer from the server at {args.server} ({type(exc).__name__}: "
                f"{exc}): is it an hpsearch server of this version?"
            ) from None

    return run


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, args.token or None)


def _study_path(name: str) -> str:
    return f"/studies/{quote(name, safe='')}"


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


# --- submit ---------------------------------------------------------------------------------------
def load_spec(path: Path) -> dict[str, Any]:
    """A study spec from a YAML or JSON file (JSON when it ends in .json). Raises CliError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise CliError(f"{path} is a folder, not a study spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"{path} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    else:
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(spec, dict):
        kind = "empty" if spec is None else f"a {type(spec).__name__}"
        raise CliError(f"{path} must hold a study spec (a mapping of fields), but it is {kind}")
    return spec


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


@_command
def submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    spec = load_spec(path)
    if args.name:
        spec["name"] = args.name
    if args.warm_start:
        warm = spec.get("warm_start")
        spec["warm_start"] = {**(warm if isinstance(warm, dict) else {}), "study": args.warm_start}
    with _client(args) as api:
        try:
            study = api.post("/studies", spec)
        except ApiError as exc:
            raise _submit_error(exc, path) from None
        server = api.server
    worker = f"hpsearch worker --server {shlex.quote(server)} --study {shlex.quote(study['name'])}"
    space = study["spec"].get("search_space")
    _out(
        f"created study {study['name']}: {study['n_trials']} trials"
        f"{f', search space {space}' if isinstance(space, str) else ''}\n"
        f"dashboard: {study['dashboard_url']}\n"
        f"start workers (on each GPU machine):\n  {worker}"
        + ("\n  (with --token or HPSEARCH_TOKEN set to the worker token)" if args.token else "")
        + f"\nfollow it:\n  hpsearch watch --server {shlex.quote(server)} "
        f"{shlex.quote(study['name'])}"
    )
    return 0


def _submit_error(exc: ApiError, path: Path) -> CliError:
    if exc.status == 422 and exc.errors:
        lines = [f"  {e['field']}: {e['reason']}" for e in exc.errors]
        count = f"{len(lines)} error{'s' if len(lines) > 1 else ''}"
        return CliError(f"the server rejected {path} ({count}):\n" + "\n".join(lines))
    if exc.status == 409:
        return CliError(f"{exc} (choose another name with --name)")
    return exc


# --- status ---------------------------------------------------------------------------------------
@_command
def status(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if not args.study:
            studies = api.get("/studies")
            if not studies:
                _out(f"no studies on {api.server} yet: create one with `hpsearch submit FILE`")
            else:
                _out(render.studies_table(studies))
            return 0
        study = api.get(_study_path(args.study))
        trials = api.get(_study_path(args.study) + "/trials")
    _out(
        "\n".join(
            [render.study_line(study), *render.data_lines(study), *render.best_lines(study), ""]
        )
    )
    _out(render.trials_table(trials) if trials else "no trials yet")
    return 0


# --- watch ----------------------------------------------------------------------------------------
@_command
def watch(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise CliError("--interval must be a positive number of seconds")
    with _client(args) as api:
        study = live.run(api, _study_path(args.study), args.interval, sys.stdout)
        server = api.server
    lines = [
        f"study {study['name']} is {study['state']}: "
        f"{study['finished']}/{study['n_trials']} trials finished"
    ]
    if study.get("error"):
        lines.append(
            f"error: {study['error']}; fix it, then `hpsearch resume {shlex.quote(study['name'])}`"
        )
    if not sys.stdout.isatty():  # on a terminal the last frame shows the best already
        lines += render.best_lines(study)
    if study.get("best"):
        lines.append(
            f"its config: hpsearch best --server {shlex.quote(server)} "
            f"{shlex.quote(study['name'])} -k 1 --format yaml"
        )
    _out("\n".join(lines))
    return 0


# --- best -----------------------------------------------------------------------------------------
@_command
def best(args: argparse.Namespace) -> int:
    # YAML is a training config to use as is: one trial unless more are asked for.
    k = args.k if args.k is not None else (1 if args.format == "yaml" else 5)
    with _client(args) as api:
        body = api.get(_study_path(args.study) + "/best", k=k)
    if args.format == "json":
        _out(json.dumps(body, indent=2))
    elif args.format == "yaml":
        if not body.get("trials"):
            raise CliError(f"study {args.study} has no complete trial yet: no config to give")
        _out(render.best_yaml(body, k))
    else:
        _out(render.best_table(body))
    return 0


# --- workers, stop, resume, delete ----------------------------------------------------------------
@_command
def workers(args: argparse.Namespace) -> int:
    with _client(args) as api:
        rows = api.get("/workers")
        server = api.server
    if not rows:
        _out(f"no workers heard from recently by {server}")
    else:
        _out(render.workers_table(rows))
    return 0


@_command
def extend(args: argparse.Namespace) -> int:
    with _client(args) as api:
        before = api.get(_study_path(args.study))
        n_trials = args.total if args.total is not None else before["n_trials"] + args.trials
        study = api.patch(_study_path(args.study), {"n_trials": n_trials})
    _out(
        f"study {study['name']}: n_trials {before['n_trials']} -> {study['n_trials']} "
        f"({study['finished']} finished); it is {study['state']}"
    )
    return 0


@_command
def stop(args: argparse.Namespace) -> int:
    with _client(args) as api:
        before = api.get(_study_path(args.study)) if args.cancel_running else {}
        query = "?cancel_running=true" if args.cancel_running else ""
        study = api.post(_study_path(args.study) + "/stop" + query)
    running = (study.get("counts") or {}).get("running", 0)
    if study["state"] == "done":
        _out(
            f"study {study['name']} is already done: "
            f"{study['finished']}/{study['n_trials']} trials finished"
        )
    elif args.cancel_running:
        handed = (before.get("counts") or {}).get("running", 0) - running
        _out(
            f"stopped study {study['name']}: {handed} running trial"
            f"{'' if handed == 1 else 's'} handed back; `hpsearch resume {study['name']}` "
            "runs them on from their last checkpoints"
        )
    else:
        _out(
            f"stopped study {study['name']}: no new trials are handed out; "
            f"{running} running trial{'' if running == 1 else 's'} will finish"
        )
    return 0


@_command
def resume(args: argparse.Namespace) -> int:
    with _client(args) as api:
        before = api.get(_study_path(args.study))
        study = api.post(_study_path(args.study) + "/resume")
    progress = f"{study['finished']}/{study['n_trials']} trials finished"
    if before["state"] == "error" and study["state"] == "running":
        _out(
            f"resumed study {study['name']}: its preflight runs again ({progress}); "
            f"it failed with: {before.get('error')}"
        )
    elif study["state"] == "running":
        _out(f"resumed study {study['name']}: trials are handed out again ({progress})")
    else:  # done: resuming hands out nothing more
        _out(f"study {study['name']} is {study['state']}: {progress}")
    return 0


@_command
def delete(args: argparse.Namespace) -> int:
    with _client(args) as api:
        api.delete(_study_path(args.study))
    _out(f"deleted study {args.study} and its artifacts")
    return 0
