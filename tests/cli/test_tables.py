"""The plain-text table and cell formats (pure functions, no server)."""

from __future__ import annotations

import datetime as dt

from cli import tables
from cli.render import (
    best_lines,
    best_table,
    best_yaml,
    data_lines,
    study_line,
    trials_table,
    workers_table,
)


def test_table_pads_columns_and_aligns_numbers_right() -> None:
    text = tables.table(
        ["NAME", "N", "NOTE"], [["a", 1, "x"], ["long-name", 120, None]], right=(1,)
    )
    assert text.splitlines() == [
        "NAME         N  NOTE",
        "a            1  x",
        "long-name  120  -",
    ]


def test_cell_formats() -> None:
    assert tables.number(0.0017826497151386949) == "0.00178"
    assert tables.number(10) == "10" and tables.number(True) == "True"
    assert tables.loss(0.6000000000000001) == "0.6000"
    assert tables.accuracy(0.805) == "80.5%"
    assert tables.improvement(25.0) == "+25.0%" and tables.improvement(-3.21) == "-3.2%"
    assert tables.improvement(None) == tables.loss(None) == "-"
    assert tables.params({"lr": 0.01, "step_size": 3, "nesterov": False}) == (
        "lr=0.01 step_size=3 nesterov=False"
    )


def test_ago_reads_naive_timestamps_as_utc() -> None:
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert tables.ago("2025-01-01T11:59:55.5", now) == "4s ago"
    assert tables.ago("2025-01-01T11:45:00", now) == "15m ago"
    assert tables.ago("2025-01-01T13:00:00+01:00", now) == "0s ago"
    assert tables.ago("2024-12-29T12:00:00", now) == "3d ago"
    assert tables.ago(None, now) == tables.ago("not a time", now) == "-"


def test_an_accuracy_study_compares_its_best_with_the_baselines_accuracy() -> None:
    study = {
        "spec": {"objective": {"metric": "val_accuracy", "epoch": "best"}},
        "best": {"number": 2, "val_loss": 0.4, "val_accuracy": 0.9, "params": {"lr": 0.1}},
        "baseline": {"number": 0, "val_loss": 0.3, "val_accuracy": 0.75},
        "improvement_over_baseline_pct": 20.0,
    }
    line = best_lines(study)[0]
    assert line.startswith("best: trial 2, val loss 0.4000, accuracy 90.0%")
    assert "vs the baseline (accuracy 75.0%, trial 0)" in line
    study["spec"] = {}
    assert "vs the baseline (0.3000, trial 0)" in best_lines(study)[0]


def test_best_configs_name_the_metric_they_rank_by() -> None:
    trial = {
        "number": 3,
        "val_loss": 0.25,
        "val_accuracy": 0.875,
        "config": {"hparams": {}},
        "improvement_over_baseline_pct": 5.0,
    }
    body = {
        "study": "s",
        "trials": [trial, {**trial, "number": 4}],
        "objective": {"metric": "val_accuracy", "epoch": "best"},
    }
    text = best_yaml(body, 2)
    assert text.startswith("# hpsearch: study s, the top 2 trials by val accuracy, best first")
    assert "# 1. trial 3, val loss 0.25, accuracy 87.5%, +5.0% vs the baseline" in text
    assert "by val loss" in best_yaml({**body, "objective": None}, 2)


def test_a_studys_data_and_error_lines() -> None:
    study = {
        "name": "pets",
        "state": "running",
        "preflight": "passed",
        "finished": 0,
        "n_trials": 4,
        "data": {
            "classes": ["cat", "dog"],
            "train_images": 40,
            "val_images": 10,
            "test_images": 0,
            "skipped_images": 2,
        },
    }
    assert data_lines(study) == [
        "data: 2 classes (cat, dog); 40 train / 10 val / 0 test images, 2 undecodable skipped"
    ]
    assert data_lines({**study, "data": None, "preflight": "pending"}) == []
    failed = {
        **study,
        "state": "error",
        "data": None,
        "preflight": "pending",
        "state_reason": "the preflight failed: /d/train holds 1 class folder(s) ['cat']",
    }
    assert data_lines(failed) == []
    assert study_line(failed).startswith("study pets: error, 0/4 finished")
    assert study_line(failed).endswith(
        "; the preflight failed: /d/train holds 1 class folder(s) ['cat']"
    )
    assert "\n" not in study_line(failed)


def test_the_workers_table_says_which_studies_a_worker_skips() -> None:
    seen = dt.datetime.now(dt.UTC).isoformat()
    lines = workers_table(
        [
            {
                "worker_id": "w-0",
                "host": "h",
                "device": "cpu",
                "study": None,
                "last_seen": seen,
                "skipped_studies": {
                    "pets": "data root /data/pets is not a directory on this machine"
                },
            },
            {"worker_id": "w-1", "host": "h", "device": "cpu", "study": "pets", "last_seen": seen},
        ]
    ).splitlines()
    assert lines[0].split()[0] == "WORKER" and len(lines) == 4
    assert lines[-1] == (
        "w-0 skips study pets: data root /data/pets is not a directory on this machine"
    )


def test_best_shows_test_columns_only_for_a_data_set_with_a_test_folder() -> None:
    trial = {
        "number": 3,
        "val_loss": 0.25,
        "val_accuracy": 0.875,
        "test_loss": 0.5,
        "test_accuracy": 0.75,
        "epochs": 2,
        "params": {"lr": 0.1},
        "improvement_over_baseline_pct": 5.0,
        "config": {"hparams": {}},
    }
    baseline = {
        **trial,
        "number": 0,
        "test_loss": None,
        "test_accuracy": None,
        "improvement_over_baseline_pct": None,
    }
    lines = best_table({"study": "s", "trials": [trial], "baseline": baseline}).splitlines()
    assert lines[0].split() == [
        "RANK",
        "#",
        "VAL",
        "LOSS",
        "ACCURACY",
        "TEST",
        "LOSS",
        "TEST",
        "ACC",
        "VS",
        "BASELINE",
        "EPOCHS",
        "PARAMS",
    ]
    assert lines[1].split()[:7] == ["1", "3", "0.2500", "87.5%", "0.5000", "75.0%", "+5.0%"]
    assert lines[2].split()[:6] == ["baseline", "0", "0.2500", "87.5%", "-", "-"]
    assert "(test: loss 0.5, accuracy 75.0%)" in best_yaml({"study": "s", "trials": [trial]}, 1)
    untested = {**trial, "test_loss": None, "test_accuracy": None}
    text = best_table({"study": "s", "trials": [untested], "baseline": None})
    assert "TEST" not in text and "test" not in best_yaml({"study": "s", "trials": [untested]}, 1)


def test_paused_trials_are_counted_and_noted() -> None:
    study = {
        "name": "s",
        "state": "running",
        "finished": 1,
        "n_trials": 4,
        "counts": {"running": 1, "waiting": 0, "paused": 2, "complete": 1, "pruned": 0},
    }
    assert study_line(study) == (
        "study s: running, 1/4 finished (1 running, 0 waiting, 2 paused, 1 complete, "
        "0 pruned, 0 failed)"
    )
    paused = {"number": 3, "state": "paused", "epochs": 3, "params": {}}
    text = trials_table([{**paused, "paused_after_epoch": 2, "promotions": 1}])
    assert "trial 3 paused after epoch 2, promoted 1 times before" in text
