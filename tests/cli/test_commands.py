"""submit, status, best, workers, stop and delete against a real server, on SQLite and PostgreSQL,
each read back through the API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import yaml

from tests.cli.conftest import Run, write
from tests.scripted import API, ScriptedWorker, create_study
from tests.servers import ThreadServer, digits_spec


def rows(text: str) -> dict[str, list[str]]:
    """A table's rows by their first cell (cells split on runs of 2+ spaces)."""
    import re

    out = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        out[cells[0]] = cells
    return out


# --- submit ---------------------------------------------------------------------------------------
def test_submit_yaml_creates_the_study(
    cli: Run, api: httpx.Client, cli_server: ThreadServer, tmp_path: Path
) -> None:
    spec = digits_spec("from-file", n_trials=7)
    path = write(tmp_path / "study.yaml", yaml.safe_dump(spec))
    r = cli("submit", str(path), "--name", "submitted-yaml")
    assert r.returncode == 0, r.stderr
    study = api.get(f"{API}/studies/submitted-yaml").json()
    assert study["n_trials"] == 7 and study["spec"]["search_space"] == "sgd_steplr_warmup"
    assert study["dashboard_url"] in r.stdout
    worker_cmd = f"hpsearch worker --server {cli_server.url} --study submitted-yaml"
    assert worker_cmd in r.stdout.splitlines()[3]
    assert api.get(f"{API}/studies/from-file").status_code == 404  # --name replaced its name


def test_submit_json_file(cli: Run, api: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path / "study.json", json.dumps(digits_spec("submitted-json", n_trials=2)))
    r = cli("submit", str(path))
    assert r.returncode == 0, r.stderr
    assert api.get(f"{API}/studies/submitted-json").json()["n_trials"] == 2


def test_submit_invalid_spec_prints_every_field(
    cli: Run, api: httpx.Client, tmp_path: Path
) -> None:
    spec = digits_spec(
        "invalid",
        n_trials=0,
        bogus=1,
        search_space={"lr": {"type": "float", "low": 1.0, "high": 0.1}},
    )
    r = cli("submit", str(write(tmp_path / "bad.yaml", yaml.safe_dump(spec))))
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("hpsearch submit: the server rejected") and "3 errors" in lines[0]
    assert "  search_space.lr: low (1.0) must be less than high (0.1)" in lines
    assert any(line.startswith("  n_trials: ") for line in lines)
    assert any(line.startswith("  bogus: ") for line in lines)
    assert api.get(f"{API}/studies/invalid").status_code == 404


def test_submit_taken_name(cli: Run, api: httpx.Client, tmp_path: Path) -> None:
    create_study(api, "taken")
    r = cli("submit", str(write(tmp_path / "s.yaml", yaml.safe_dump(digits_spec("taken")))))
    assert r.returncode == 1
    assert r.stderr == (
        "hpsearch submit: server answered 409: a study named 'taken' exists "
        "(choose another name with --name)\n"
    )


# --- status, best, workers after a scripted run -----------------------------------------------
def test_status_lists_studies(cli: Run, scripted: dict) -> None:
    r = cli("status")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert table["STUDY"][:3] == ["STUDY", "STATE", "FINISHED"]
    # name, state, finished/n, running, pruned, failed, best val loss, vs baseline, priority,
    # weight
    assert table["scripted"] == [
        "scripted",
        "running",
        "3/5",
        "1",
        "1",
        "1",
        "0.6000",
        "+25.0%",
        "0",
        "1",
    ]


def test_status_of_one_study_lists_its_trials(cli: Run, api: httpx.Client, scripted: dict) -> None:
    r = cli("status", "scripted")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (
        "study scripted: running, 3/5 finished (1 running, 0 waiting, "
        "2 complete, 1 pruned, 1 failed)"
    )
    assert lines[1].startswith(
        "best: trial 1, val loss 0.6000, accuracy 80.0%, +25.0% vs the baseline (0.8000, trial 0)"
    )
    table = rows(r.stdout)
    trials = {t["number"]: t for t in api.get(f"{API}/studies/scripted/trials").json()}
    assert table["0*"][1:7] == ["complete", "0.8000", "70.0%", "3", "gpu-a-0", "-"]
    assert table["1"][1:7] == ["complete", "0.6000", "80.0%", "3", "gpu-a-0", "-"]
    assert table["2"][1:3] == ["pruned", "9.0000"]
    assert table["3"][1] == "fail"
    assert table["4"][1:7] == ["running", "1.1000", "50.0%", "1", "gpu-b-1", "-"]
    assert table["1"][7] == " ".join(f"{k}={v:.3g}" for k, v in trials[1]["params"].items())
    assert "* the baseline recipe" in lines
    assert "trial 3 failed: CUDA out of memory" in lines


def test_best_table(cli: Run, scripted: dict) -> None:
    r = cli("best", "scripted", "-k", "5")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert table["1"][:5] == ["1", "1", "0.6000", "80.0%", "+25.0%"]
    assert table["2 (baseline)"][:5] == ["2 (baseline)", "0", "0.8000", "70.0%", "+0.0%"]
    assert len(table) == 3  # header + the two complete trials (pruned ones do not rank)


def test_best_table_adds_the_baseline_row(cli: Run, scripted: dict) -> None:
    r = cli("best", "scripted", "-k", "1")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert table["baseline"][:5] == ["baseline", "0", "0.8000", "70.0%", "+0.0%"]


def test_best_json_is_the_api_body(cli: Run, api: httpx.Client, scripted: dict) -> None:
    r = cli("best", "scripted", "-k", "2", "--format", "json")
    assert r.returncode == 0, r.stderr
    best = api.get(f"{API}/studies/scripted/best", params={"k": 2}).json()
    assert json.loads(r.stdout) == best


def test_best_yaml_is_the_best_trials_config(cli: Run, api: httpx.Client, scripted: dict) -> None:
    r = cli("best", "scripted", "-k", "1", "--format", "yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# hpsearch: study scripted, trial 1, val loss 0.6")
    best = api.get(f"{API}/studies/scripted/best", params={"k": 1}).json()["trials"][0]
    config = yaml.safe_load(r.stdout)
    assert config == best["config"]
    assert set(config) == {"model", "data", "training", "hparams"}


def test_best_yaml_top_k_is_a_list_of_configs(cli: Run, api: httpx.Client, scripted: dict) -> None:
    r = cli("best", "scripted", "-k", "5", "--format", "yaml")
    assert r.returncode == 0, r.stderr
    body = api.get(f"{API}/studies/scripted/best", params={"k": 5}).json()
    assert yaml.safe_load(r.stdout) == [t["config"] for t in body["trials"]]


def test_best_yaml_without_a_complete_trial(cli: Run, api: httpx.Client) -> None:
    create_study(api, "nothing-yet")
    r = cli("best", "nothing-yet", "--format", "yaml")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        "hpsearch best: study nothing-yet has no complete trial yet: no config to give\n"
    )


def test_workers(cli: Run, scripted: dict) -> None:
    r = cli("workers")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert table["WORKER"] == ["WORKER", "HOST", "DEVICE", "STUDY", "TRIAL", "LAST SEEN", "LABELS"]
    row = table["gpu-b-1"]
    assert row[:5] == ["gpu-b-1", "gpu-b", "cuda:1", "scripted", str(scripted["running"].number)]
    assert row[5].endswith("s ago")
    assert table["gpu-a-0"][3] == "idle"  # its last trial failed: it runs nothing


# --- stop, delete, unknown studies ----------------------------------------------------------
def test_stop_then_delete(cli: Run, api: httpx.Client) -> None:
    create_study(api, "short-lived")
    r = cli("stop", "short-lived")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stopped study short-lived")
    assert api.get(f"{API}/studies/short-lived").json()["state"] == "stopped"
    assert ScriptedWorker(api, "w-stop", "short-lived").claim() is None  # 204: nothing to run

    r = cli("delete", "short-lived")
    assert r.returncode == 0, r.stderr
    assert api.get(f"{API}/studies/short-lived").status_code == 404
    again = cli("delete", "short-lived")
    assert again.returncode == 1
    assert again.stderr == "hpsearch delete: server answered 404: no study named 'short-lived'\n"


def test_unknown_study(cli: Run) -> None:
    for command in (["status", "ghost"], ["best", "ghost"], ["watch", "ghost"], ["stop", "ghost"]):
        r = cli(*command)
        assert r.returncode == 1, command
        assert r.stderr == f"hpsearch {command[0]}: server answered 404: no study named 'ghost'\n"
        assert r.stdout == ""


def test_stop_a_running_study_keeps_its_running_trial(cli: Run, api: httpx.Client) -> None:
    create_study(api, "to-stop", n_trials=3)
    worker = ScriptedWorker(api, "w-to-stop", "to-stop")
    trial = worker.next_trial()
    r = cli("stop", "to-stop")
    assert r.returncode == 0, r.stderr
    assert "1 running trial will finish" in r.stdout
    assert worker.complete(trial.trial_id, 0.5).status_code == 200
