"""Tokens: 401 for a missing or wrong token, 403 for one of the wrong kind, the dashboard behind
the same credentials (HTTP Basic for browsers), and no token or database password in the
server's log or in any error body."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import optuna
import pytest
from pydantic import SecretStr, ValidationError

from service.auth import Role, authorize
from service.errors import Forbidden, Unauthorized
from service.settings import Settings
from tests.scripted import API, unique
from tests.servers import Server, digits_spec
from tests.service.conftest import ServerStarter, StorageMaker

ADMIN = "admin-tok-5f1e2d9c8b7a"
WORKER = "worker-tok-0a9b8c7d6e5f"
READ = "read-tok-3c4d5e6f7a8b"
DB_PASSWORD = "db-pass-9e8d7c6b5a4f"
SECRETS = (ADMIN, WORKER, READ, DB_PASSWORD)

seen_bodies: list[str] = []


@pytest.fixture(scope="module")
def secured(new_storage: StorageMaker, start_server: ServerStarter) -> Server:
    url = new_storage()
    if url.startswith("postgresql"):  # trust auth ignores it; the server must never show it
        url = url.replace("://postgres@", f"://postgres:{DB_PASSWORD}@")
    return start_server(url, process=True, admin_token=ADMIN, worker_token=WORKER, read_token=READ)


def _client(server: Server, token: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    hooks = {"response": [lambda r: (r.read(), seen_bodies.append(r.text))]}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60, event_hooks=hooks)


@pytest.fixture
def admin(secured: Server) -> Iterator[httpx.Client]:
    with _client(secured, ADMIN) as http:
        yield http


def _basic(password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


def _calls(study: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", f"{API}/studies", None),
        ("GET", f"{API}/studies/{study}", None),
        ("POST", f"{API}/studies", digits_spec(unique("unauth"))),
        ("POST", f"{API}/studies/{study}/stop", None),
        ("POST", f"{API}/studies/{study}/resume", None),
        ("DELETE", f"{API}/studies/{study}", None),
        ("POST", f"{API}/trials/claim", {"worker_id": "w"}),
        ("POST", f"{API}/trials/1/report", {"epoch": 0, "val_loss": 1.0}),
        ("GET", f"{API}/workers", None),
        ("GET", "/metrics", None),
    ]


def test_missing_or_wrong_token_is_401(secured: Server, admin: httpx.Client) -> None:
    study = unique("guarded")
    assert admin.post(f"{API}/studies", json=digits_spec(study)).status_code == 201
    for headers in (
        {},
        {"authorization": "Bearer not-a-token"},
        {"authorization": f"Bearer {ADMIN}x"},
        {"authorization": "Basic !!!"},
        {"authorization": f"Token {ADMIN}"},
    ):
        with _client(secured) as http:
            for method, path, body in _calls(study):
                r = http.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (headers, method, path, r.text)
                assert "token" in r.json()["detail"]
    names = optuna.get_all_study_names(storage=secured.storage)
    assert names == [study]  # nothing was created, nothing deleted


def test_a_token_of_the_wrong_kind_is_403(secured: Server, admin: httpx.Client) -> None:
    study = unique("kinds")
    assert admin.post(f"{API}/studies", json=digits_spec(study)).status_code == 201
    with _client(secured, READ) as reader, _client(secured, WORKER) as worker:
        for http in (reader, worker):
            assert http.get(f"{API}/studies/{study}").status_code == 200
            assert http.get("/metrics").status_code == 200
            for method, path, body in (
                ("POST", f"{API}/studies", digits_spec(unique("x"))),
                ("POST", f"{API}/studies/{study}/stop", None),
                ("POST", f"{API}/studies/{study}/resume", None),
                ("DELETE", f"{API}/studies/{study}", None),
            ):
                r = http.request(method, path, json=body)
                assert r.status_code == 403, (method, path, r.text)
                assert "admin" in r.json()["detail"]
        r = reader.post(f"{API}/trials/claim", json={"worker_id": "w", "study": study})
        assert r.status_code == 403 and "worker" in r.json()["detail"]

        # The worker token runs the protocol.
        r = worker.post(f"{API}/trials/claim", json={"worker_id": "w", "study": study})
        assert r.status_code == 200, r.text
        trial_id = r.json()["trial_id"]
        r = worker.post(f"{API}/trials/{trial_id}/report", json={"epoch": 0, "val_loss": 1.0})
        assert r.status_code == 200
        assert reader.post(f"{API}/trials/{trial_id}/heartbeat").status_code == 403
        assert (
            worker.post(f"{API}/trials/{trial_id}/complete", json={"val_loss": 1.0}).status_code
            == 200
        )
    [trial] = optuna.load_study(study_name=study, storage=secured.storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE


def test_the_dashboard_needs_the_same_credentials(secured: Server) -> None:
    with _client(secured) as http:
        r = http.get("/dashboard")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
        assert http.get("/dashboard", headers=_basic("wrong")).status_code == 401
        assert http.get("/api/studies").status_code == 401  # the dashboard's own API
        r = http.get("/dashboard", headers=_basic(READ))
        assert r.status_code == 200 and "<html" in r.text.lower()
        assert http.get("/api/studies", headers=_basic(READ)).status_code == 200
        bearer = {"authorization": f"Bearer {READ}"}
        assert http.get("/api/studies", headers=bearer).status_code == 200
        # Changing anything through the dashboard takes the admin token.
        new = {"study_name": "via-dashboard", "directions": ["minimize"]}
        r = http.post("/api/studies", json=new, headers=_basic(READ))
        assert r.status_code == 401
        assert "via-dashboard" not in optuna.get_all_study_names(storage=secured.storage)
        # Probes and the API description stay open.
        assert http.get("/healthz").status_code == 200
        assert http.get("/openapi.json").status_code == 200


def test_no_secret_in_the_log_or_any_body(secured: Server, admin: httpx.Client) -> None:
    study = unique("secrets")
    with _client(secured) as anonymous, _client(secured, READ) as reader:
        admin.post(f"{API}/studies", json=digits_spec(study))
        admin.post(f"{API}/studies", json=digits_spec(study))  # 409
        admin.post(f"{API}/studies", json={**digits_spec(unique("bad")), "n_trials": 0})  # 422
        admin.post(f"{API}/trials/123456/report", json={"epoch": 0, "val_loss": 1.0})  # 404
        anonymous.get(f"{API}/studies", headers={"authorization": f"Bearer {ADMIN}-guess"})
        reader.delete(f"{API}/studies/{study}")  # 403
        anonymous.get("/dashboard", headers=_basic(WORKER + "x"))
    assert seen_bodies, "no responses recorded"
    log = secured.log_path.read_text(errors="replace")
    assert "serving storage" in log  # the log is the server's, and it names the storage
    for secret in SECRETS:
        assert secret not in log
        assert not [body for body in seen_bodies if secret in body]


# --- the rules without a server ---------------------------------------------------------


def _settings(**values: object) -> Settings:
    return Settings(storage=SecretStr("sqlite:///x.db"), **values)


def test_read_access_can_be_open() -> None:
    settings = _settings(admin_token=ADMIN, read_token=READ, read_access="open")
    authorize(settings, None, Role.READ)  # no token needed to read
    with pytest.raises(Unauthorized):
        authorize(settings, None, Role.WORKER)
    with pytest.raises(Forbidden):
        authorize(settings, f"Bearer {READ}", Role.ADMIN)


def test_tokens_off_lets_everything_through_and_partial_tokens_are_refused() -> None:
    authorize(_settings(), None, Role.ADMIN)
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        _settings(worker_token=WORKER)
