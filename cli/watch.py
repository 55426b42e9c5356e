"""`hpsearch watch`: poll a study and its workers until the study is done or stopped.

On a terminal each refresh redraws the screen in place; otherwise (a pipe, a log file) one line
is printed each time something changes. A server that stops answering mid-watch is shown and
retried (a restart loses nothing); an unknown study or a refused token ends the watch."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from cli import render
from cli import tables as fmt
from cli.client import ApiError, Client, ServerUnreachable

CLEAR = "\033[H\033[J"  # cursor home, erase to the end of the screen
ENDED = ("done", "stopped", "error")

Body = Mapping[str, Any]


def run(api: Client, path: str, interval: float, out: TextIO) -> Body:
    """Watch until the study ends; returns its last summary. `path` is /studies/{name}."""
    tty = out.isatty()
    study = api.get(path)  # the first answer must come: a typo'd name fails at once
    workers, running = _workers(api), _running(api, path, study, tty)
    trouble, last = "", ""
    while True:
        if tty:
            text = frame(api.server, interval, study, workers, running, trouble)
            out.write(CLEAR + text + "\n")
        else:
            line = summary_line(study, workers, trouble)
            if line != last:
                out.write(f"{time.strftime('%H:%M:%S')} {line}\n")
                last = line
        out.flush()
        if study["state"] in ENDED:
            return study
        time.sleep(interval)
        try:
            study = api.get(path)
            workers, running, trouble = _workers(api), _running(api, path, study, tty), ""
        except ApiError as exc:
            if exc.status < 500:
                raise
            trouble = f"{exc} (retrying)"
        except ServerUnreachable as exc:
            trouble = f"{exc} (retrying)"


def _workers(api: Client) -> list[Body]:
    try:
        return api.get("/workers") or []
    except ApiError as exc:
        if exc.status in (401, 403, 404):  # an older server, or a token that may not list them
            return []
        raise


def _running(api: Client, path: str, study: Body, tty: bool) -> list[Body]:
    """The running trials, for the terminal view only (a pipe gets study-level changes)."""
    if not tty or not (study.get("counts") or {}).get("running"):
        return []
    return [t for t in api.get(path + "/trials") if t.get("state") == "running"]


def _split(name: str, workers: Sequence[Body]) -> tuple[list[Body], list[Body], int]:
    """Workers on this study, idle workers, and how many run other studies."""
    ours = [w for w in workers if w.get("study") == name]
    idle = [w for w in workers if not w.get("study")]
    return ours, idle, len(workers) - len(ours) - len(idle)


def frame(
    server: str,
    interval: float,
    study: Body,
    workers: Sequence[Body],
    running: Sequence[Body],
    trouble: str,
) -> str:
    ours, idle, others = _split(study["name"], workers)
    lines = [
        f"hpsearch watch  {server}  every {interval:g}s  Ctrl-C to quit"
        f"  {time.strftime('%H:%M:%S')}",
        "",
        render.study_line(study),
        *render.best_lines(study),
        f"dashboard: {study.get('dashboard_url', fmt.MISSING)}",
        "",
        f"workers: {len(ours)} on this study, {len(idle)} idle, {others} on other studies",
    ]
    if ours or idle:
        lines.append(render.workers_table([*ours, *idle]))
    if running:
        epochs = (study.get("spec") or {}).get("training", {}).get("epochs")
        lines += ["", f"running trials ({len(running)}):", render.running_table(running, epochs)]
    if trouble:
        lines += ["", f"! {trouble}"]
    return "\n".join(lines)


def summary_line(study: Body, workers: Sequence[Body], trouble: str) -> str:
    """One line without timestamps that move, so that it changes only when the study does."""
    c = study.get("counts") or {}
    best = study.get("best")
    parts = [
        f"{study['name']} {study['state']} {study['finished']}/{study['n_trials']} finished",
        f"{c.get('running', 0)} running {c.get('waiting', 0)} waiting "
        + (f"{c['paused']} paused " if c.get("paused") else "")
        + f"{c.get('complete', 0)} complete {c.get('pruned', 0)} pruned {c.get('fail', 0)} failed",
    ]
    if best:
        parts.append(
            f"best #{best['number']} val loss {fmt.loss(best['val_loss'])} "
            f"({fmt.improvement(study.get('improvement_over_baseline_pct'))} vs baseline)"
        )
    else:
        parts.append("best -")
    ours, idle, _ = _split(study["name"], workers)
    busy = [f"{w['worker_id']}:#{w.get('trial_number')}" for w in ours]
    parts.append(f"workers {' '.join(busy) or '-'} ({len(idle)} idle)")
    if study.get("state_reason"):
        parts.append(study["state_reason"])
    if trouble:
        parts.append(trouble)
    return " | ".join(parts)
