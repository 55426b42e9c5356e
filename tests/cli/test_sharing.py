"""`hpsearch extend`, `--label` and the scheduling columns, against a real server."""

from __future__ import annotations

import httpx

from cli.main import build_parser
from tests.cli.conftest import Run, run_process
from tests.cli.test_commands import rows
from tests.scripted import API, ScriptedWorker, create_study
from tests.servers import ThreadServer
from worker.client import ServerClient


def test_extend_adds_trials_to_a_done_study(cli: Run, api: httpx.Client) -> None:
    create_study(api, "to-extend", n_trials=1)
    worker = ScriptedWorker(api, "ext-0", "to-extend")
    assert worker.run(worker.next_trial(), [1.0]) == "complete"
    assert api.get(f"{API}/studies/to-extend").json()["state"] == "done"
    r = cli("extend", "to-extend", "--trials", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "study to-extend: n_trials 1 -> 3 (1 finished); it is running\n"
    assert api.get(f"{API}/studies/to-extend").json()["n_trials"] == 3
    r = cli("extend", "to-extend", "--total", "2")
    assert r.returncode == 0, r.stderr
    assert api.get(f"{API}/studies/to-extend").json()["n_trials"] == 2


def test_extend_below_what_runs_is_one_line(cli: Run, api: httpx.Client) -> None:
    create_study(api, "to-shrink", n_trials=4)
    for worker_id in ("shrink-0", "shrink-1"):
        ScriptedWorker(api, worker_id, "to-shrink").next_trial()
    r = cli("extend", "to-shrink", "--total", "1")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        "hpsearch extend: server answered 409: n_trials 1 is below the 2 trials study "
        "'to-shrink' has finished or in flight (0 finished, 2 running, 0 waiting)\n"
    )
    assert api.get(f"{API}/studies/to-shrink").json()["n_trials"] == 4


def test_extend_needs_a_number(cli: Run) -> None:
    for args in (
        ["extend", "x"],
        ["extend", "x", "--trials", "0"],
        ["extend", "x", "--trials", "1", "--total", "2"],
    ):
        r = cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, args
        assert r.stderr.splitlines()[-1].startswith("hpsearch extend: error:")


def test_label_flags_are_parsed() -> None:
    args = build_parser().parse_args(
        ["worker", "--label", "gpu=h100", "--label", "pool=a", "--label", "empty="]
    )
    assert args.label == [("gpu", "h100"), ("pool", "a"), ("empty", "")]


def test_bad_labels_are_one_clear_line(cli: Run) -> None:
    for label, reason in (
        ("gpu", "'gpu' is not KEY=VALUE (e.g. gpu=h100)"),
        ("=h100", "label key ''"),
        ("gpu type=a", "label key 'gpu type'"),
        ("gpu=h 100", "label value 'h 100'"),
    ):
        r = cli("worker", "--label", label, "--exit-when-idle")
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert f"argument --label: {reason}" in r.stderr.splitlines()[-1]
    r = cli("worker", "--label", "gpu=h100", "--label", "gpu=a100", "--exit-when-idle")
    assert r.returncode == 1
    assert r.stderr == "hpsearch worker: --label gpu given twice ('h100' and 'a100')\n"


def test_the_worker_client_sends_its_labels(cli_server: ThreadServer, api: httpx.Client) -> None:
    create_study(api, "needs-h100", n_trials=2, scheduling={"requires": {"gpu": "h100"}})
    client = ServerClient(cli_server.url)
    try:
        assert client.claim("plain-0", "needs-h100", "cpu", "host") is None
        claim = client.claim("h100-0", "needs-h100", "cuda:0", "host", {"gpu": "h100"})
        assert claim is not None and claim["study"] == "needs-h100"
    finally:
        client.close()
    workers = {w["worker_id"]: w for w in api.get(f"{API}/workers").json()}
    assert workers["h100-0"]["labels"] == {"gpu": "h100"}
    assert workers["plain-0"]["labels"] == {}


def test_status_shows_priority_and_weight(cli: Run, api: httpx.Client) -> None:
    create_study(api, "weighted", scheduling={"priority": 2, "weight": 2.5})
    r = cli("status")
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert table["STUDY"][-2:] == ["PRIORITY", "WEIGHT"]
    assert table["weighted"][-2:] == ["2", "2.5"]
    r = cli("workers")
    assert r.returncode == 0, r.stderr


def test_a_worker_process_announces_its_labels(cli_server: ThreadServer, api: httpx.Client) -> None:
    """`hpsearch worker --label` end to end: the study needs another GPU, so the worker gets
    nothing (and exits, --exit-when-idle) but the server has heard its labels."""
    create_study(api, "needs-h200", scheduling={"requires": {"gpu": "h200"}})
    r = run_process(
        "worker",
        "--study",
        "needs-h200",
        "--label",
        "gpu=a100",
        "--label",
        "pool=b",
        "--exit-when-idle",
        "--device",
        "cpu",
        "--worker-id",
        "labelled-proc",
        server=cli_server.url,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "nothing to run" in r.stderr
    workers = {w["worker_id"]: w for w in api.get(f"{API}/workers").json()}
    assert workers["labelled-proc"]["labels"] == {"gpu": "a100", "pool": "b"}
    assert api.get(f"{API}/studies/needs-h200").json()["counts"]["running"] == 0
