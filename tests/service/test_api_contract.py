"""Contract details of the API: wrong methods, the training loss by epoch, and apps that keep
their metrics apart."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.scripted import API, ScriptedWorker, create_study, trials, unique


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/trials/claim", "POST"),
        ("GET", "/trials/1/report", "POST"),
        ("PUT", "/studies", "GET, POST"),
        ("PATCH", "/workers", "GET"),
    ],
)
def test_a_method_the_path_does_not_have_is_405(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    r = client.request(method, f"{API}{path}")
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert method in r.json()["detail"]
    assert client.get(f"{API}/no-such-thing").status_code == 404


def test_train_loss_is_kept_by_epoch(client: httpx.Client) -> None:
    name = unique("train-loss")
    create_study(client, name, pruner={"name": "none"})
    worker = ScriptedWorker(client, "tl", study=name)
    trial = worker.claim()
    assert trial is not None
    for epoch, (val, train) in enumerate([(1.0, 1.4), (0.8, 0.9)]):
        assert worker.report(trial.trial_id, epoch, val, train_loss=train).status_code == 200
    # A retried report changes nothing.
    assert worker.report(trial.trial_id, 1, 0.8, train_loss=0.5).status_code == 200
    [shown] = [t for t in trials(client, name) if t["trial_id"] == trial.trial_id]
    assert shown["train_loss"] == {"0": 1.4, "1": 0.9}


def _claims_total(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("hpsearch_claims_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_apps_in_one_process_count_apart(tmp_path: Path) -> None:
    apps = [
        create_app(
            Settings(storage=f"sqlite:///{tmp_path / f'{k}.db'}", data_dir=tmp_path / str(k))
        )
        for k in (0, 1)
    ]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        for client in (first, second):
            assert (
                client.post(
                    f"{API}/studies", json={"name": "m", "data": {"kind": "digits"}, "n_trials": 3}
                ).status_code
                == 201
            )
        for _ in range(2):
            assert first.post(f"{API}/trials/claim", json={"worker_id": "w"}).status_code == 200
        assert _claims_total(first) == 2
        assert _claims_total(second) == 0


def _resolve(document: dict, ref: str) -> dict:
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_claim_links_to_the_operations_on_its_trial(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    links = document["paths"]["/api/v1/trials/claim"]["post"]["responses"]["200"]["links"]
    reached = set()
    for link in links.values():
        operation = _resolve(document, link["operationRef"])
        assert [p["name"] for p in operation["parameters"] if p["in"] == "path"] == ["trial_id"]
        assert link["parameters"] == {"trial_id": "$response.body#/trial_id"}
        reached.add(operation["operationId"].split("_api_v1_")[0])
    assert reached == {
        "report_epoch",
        "heartbeat",
        "complete_trial",
        "fail_trial",
        "pause_trial",
        "upload_checkpoint",
        "upload_weights",
    }


def test_the_schema_says_which_data_kind_needs_a_root(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    kinds = {}
    for ref in schemas["StudySpec"]["properties"]["data"]["oneOf"]:
        schema = _resolve({"components": {"schemas": schemas}}, ref["$ref"])
        kinds[
            tuple(
                schema["properties"]["kind"].get(
                    "enum", [schema["properties"]["kind"].get("const")]
                )
            )
        ] = schema
    assert "root" in kinds[("imagefolder",)]["required"]
    assert "root" not in kinds[("digits",)].get("required", [])


def test_sub_second_leases_reach_the_worker(tmp_path: Path) -> None:
    settings = Settings(
        storage=f"sqlite:///{tmp_path / 'h.db'}",
        data_dir=tmp_path,
        heartbeat_interval=0.5,
        lease_grace=1.5,
    )
    assert settings.grace_period == 1.5
    with TestClient(create_app(settings)) as http:
        create_study(http, "sub-second")
        claimed = ScriptedWorker(http, "w", "sub-second").claim()
        assert claimed is not None and claimed.body["heartbeat_interval"] == 0.5
        beat = http.post(f"{API}/trials/{claimed.trial_id}/heartbeat", params={"worker_id": "w"})
        assert beat.json()["heartbeat_interval"] == 0.5
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Settings(heartbeat_interval=0.01)
