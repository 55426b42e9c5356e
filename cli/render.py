"""Text views of the API's bodies (StudyPublic, TrialPublic, BestList, WorkerPublic), shared by
`status`, `watch`, `best` and `workers`. Pure functions of the JSON: no I/O here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from cli import tables as fmt

Body = Mapping[str, Any]


def studies_table(studies: Sequence[Body]) -> str:
    rows = []
    for s in studies:
        counts = s.get("counts") or {}
        best = s.get("best") or {}
        rows.append(
            [
                s["name"],
                s["state"],
                f"{s['finished']}/{s['n_trials']}",
                counts.get("running", 0),
                counts.get("pruned", 0),
                counts.get("fail", 0),
                fmt.loss(best.get("val_loss")),
                fmt.improvement(s.get("improvement_over_baseline_pct")),
                s.get("priority"),
                s.get("weight"),
            ]
        )
    headers = [
        "STUDY",
        "STATE",
        "FINISHED",
        "RUNNING",
        "PRUNED",
        "FAILED",
        "BEST VAL LOSS",
        "VS BASELINE",
        "PRIORITY",
        "WEIGHT",
    ]
    return fmt.table(headers, rows, right=(2, 3, 4, 5, 6, 7, 8, 9))


def study_line(study: Body) -> str:
    """'study flowers: running, 3/20 finished (2 running, 1 waiting, 1 pruned, 0 failed)'."""
    c = study.get("counts") or {}
    return (
        f"study {study['name']}: {study['state']}, {study['finished']}/{study['n_trials']} finished"
        f" ({c.get('running', 0)} running, {c.get('waiting', 0)} waiting,"
        + (f" {c['paused']} paused," if c.get("paused") else "")
        + f" {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned,"
        f" {c.get('fail', 0)} failed)"
        + (f"; {study['state_reason']}" if study.get("state_reason") else "")
    )


def data_lines(study: Body) -> list[str]:
    """What the study's preflight found in its data set; nothing before it passed."""
    data = study.get("data")
    if not data:
        return []
    classes = data.get("classes") or []
    shown = ", ".join(classes[:10]) + (
        f", ... ({len(classes) - 10} more)" if len(classes) > 10 else ""
    )
    line = (
        f"data: {len(classes)} classes ({shown}); {data.get('train_images')} train / "
        f"{data.get('val_images')} val / {data.get('test_images')} test images"
    )
    if data.get("skipped_images"):
        line += f", {data['skipped_images']} undecodable skipped"
    return [line]


def best_lines(study: Body) -> list[str]:
    """The best trial so far, its improvement over the baseline, and its params."""
    best, baseline = study.get("best"), study.get("baseline")
    if not best:
        return ["best: no complete trial yet"]
    line = f"best: trial {best['number']}, val loss {fmt.loss(best['val_loss'])}"
    if best.get("val_accuracy") is not None:
        line += f", accuracy {fmt.accuracy(best['val_accuracy'])}"
    if best.get("is_baseline"):
        line += " (the baseline recipe)"
    elif baseline:
        pct = study.get("improvement_over_baseline_pct")
        objective = (study.get("spec") or {}).get("objective") or {}
        if objective.get("metric") == "val_accuracy":  # the improvement is in accuracy
            base = f"accuracy {fmt.accuracy(baseline.get('val_accuracy'))}"
        else:
            base = fmt.loss(baseline["val_loss"])
        line += f", {fmt.improvement(pct)} vs the baseline ({base}, trial {baseline['number']})"
    else:
        line += ", baseline not finished yet"
    return [line, f"      {fmt.params(best.get('params'))}"]


def trials_table(trials: Sequence[Body]) -> str:
    rows = []
    for t in trials:
        number = (
            f"{t['number']}*"
            if t.get("is_baseline")
            else f"{t['number']}p"
            if t.get("prior")
            else t["number"]
        )
        rows.append(
            [
                number,
                t["state"],
                fmt.loss(t.get("val_loss")),
                fmt.accuracy(t.get("val_accuracy")),
                t.get("epochs"),
                t.get("worker"),
                t.get("retry_of"),
                fmt.params(t.get("params")),
            ]
        )
    headers = ["#", "STATE", "VAL LOSS", "ACCURACY", "EPOCHS", "WORKER", "RETRY OF", "PARAMS"]
    notes = ["* the baseline recipe"] if any(t.get("is_baseline") for t in trials) else []
    if any(t.get("prior") for t in trials):
        notes.append("p prior evidence from the warm start's source study (not run here)")
    notes += [
        f"trial {t['number']} paused after epoch {t['paused_after_epoch']}"
        + (f", promoted {t['promotions']} times before" if t.get("promotions") else "")
        for t in trials
        if t["state"] == "paused"
    ]
    notes += [
        f"trial {t['number']} failed: {_first_line(t['fail_reason'])}"
        for t in trials
        if t["state"] == "fail" and t.get("fail_reason")
    ]
    return "\n".join([fmt.table(headers, rows, right=(0, 2, 3, 4, 6)), *notes])


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def best_table(body: Body) -> str:
    trials, baseline = body.get("trials") or [], body.get("baseline")
    if not trials:
        return f"study {body['study']} has no complete trial yet"
    # test columns only where the data set has a test folder: they are shown, never ranked by
    tested = any(t.get("test_loss") is not None for t in [*trials, baseline or {}])
    rows: list[list[Any]] = []
    for rank, t in enumerate(trials, start=1):
        rows.append(_best_row(f"{rank} (baseline)" if t.get("is_baseline") else rank, t, tested))
    if baseline and not any(t.get("is_baseline") for t in trials):
        rows.append(_best_row("baseline", baseline, tested))
    headers = [
        "RANK",
        "#",
        "VAL LOSS",
        "ACCURACY",
        *(["TEST LOSS", "TEST ACC"] if tested else []),
        "VS BASELINE",
        "EPOCHS",
        "PARAMS",
    ]
    text = fmt.table(headers, rows, right=tuple(range(1, 8 if tested else 6)))
    if baseline is None:
        text += "\n(the baseline has not finished: no improvement to show)"
    return text


def _best_row(rank: object, t: Body, tested: bool = False) -> list[Any]:
    test = [fmt.loss(t.get("test_loss")), fmt.accuracy(t.get("test_accuracy"))] if tested else []
    return [
        rank,
        t["number"],
        fmt.loss(t["val_loss"]),
        fmt.accuracy(t.get("val_accuracy")),
        *test,
        fmt.improvement(t.get("improvement_over_baseline_pct")),
        t.get("epochs"),
        fmt.params(t.get("params")),
    ]


def best_yaml(body: Body, k: int) -> str:
    """Training configs usable as is. -k 1: the best trial's config, a mapping; -k N: a list of
    the top N configs, best first. Comments name the study, each trial and its val loss."""
    trials = body.get("trials") or []
    study = body["study"]
    if k == 1:
        t = trials[0]
        return (
            f"# hpsearch: study {study}, trial {t['number']}, val loss {t['val_loss']:.6g}"
            f"{_accuracy(t)}{_vs(t)}\n" + yaml.safe_dump(t["config"], sort_keys=False)
        )
    metric = (body.get("objective") or {}).get("metric", "val_loss")
    by = "val accuracy" if metric == "val_accuracy" else "val loss"
    parts = [f"# hpsearch: study {study}, the top {len(trials)} trials by {by}, best first\n"]
    for rank, t in enumerate(trials, start=1):
        parts.append(
            f"# {rank}. trial {t['number']}, val loss {t['val_loss']:.6g}{_accuracy(t)}{_vs(t)}\n"
        )
        parts.append(yaml.safe_dump([t["config"]], sort_keys=False))
    return "".join(parts)


def _accuracy(t: Body) -> str:
    accuracy, test_loss = t.get("val_accuracy"), t.get("test_loss")
    text = "" if accuracy is None else f", accuracy {fmt.accuracy(accuracy)}"
    if test_loss is not None:
        text += f" (test: loss {test_loss:.6g}, accuracy {fmt.accuracy(t.get('test_accuracy'))})"
    return text


def _vs(t: Body) -> str:
    if t.get("is_baseline"):
        return " (the baseline recipe)"
    pct = t.get("improvement_over_baseline_pct")
    return "" if pct is None else f", {fmt.improvement(pct)} vs the baseline"


def workers_table(workers: Sequence[Body]) -> str:
    rows = [
        [
            w["worker_id"],
            w.get("host"),
            w.get("device"),
            w.get("study") or "idle",
            w.get("trial_number"),
            fmt.ago(w.get("last_seen")),
            _labels(w.get("labels")),
        ]
        for w in workers
    ]
    headers = ["WORKER", "HOST", "DEVICE", "STUDY", "TRIAL", "LAST SEEN", "LABELS"]
    notes = [
        f"{w['worker_id']} skips study {study}: {_first_line(why)}"
        for w in workers
        for study, why in sorted((w.get("skipped_studies") or {}).items())
    ]
    return "\n".join([fmt.table(headers, rows, right=(4,)), *notes])


def _labels(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or fmt.MISSING


def running_table(trials: Sequence[Body], epochs: int | None) -> str:
    """Running trials: who runs them, how far they got, their last validation loss."""
    rows = [
        [
            t["number"],
            t.get("worker"),
            t.get("device"),
            f"{t.get('epochs', 0)}/{epochs}" if epochs else t.get("epochs"),
            fmt.loss(t.get("val_loss")),
            fmt.params(t.get("params")),
        ]
        for t in trials
    ]
    headers = ["#", "WORKER", "DEVICE", "EPOCHS", "VAL LOSS", "PARAMS"]
    return fmt.table(headers, rows, right=(0, 3, 4))
