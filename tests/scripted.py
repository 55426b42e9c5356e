"""A scripted worker: the trial protocol over HTTP, without any training. The service and the CLI
tests drive their servers with it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.servers import digits_spec

API = "/api/v1"
_names = itertools.count()


def unique(prefix: str) -> str:
    """A study name no other test uses."""
    return f"{prefix}-{next(_names)}"


def create_study(http: httpx.Client, name: str, **overrides: Any) -> dict[str, Any]:
    r = http.post(f"{API}/studies", json=digits_spec(name, **overrides))
    assert r.status_code == 201, r.text
    return r.json()


@dataclass
class Claimed:
    trial_id: int
    number: int
    params: dict[str, Any]
    body: dict[str, Any]


class ScriptedWorker:
    """Plays a worker over HTTP: claims trials of one study (or any), reports, completes, fails.
    `device` and `host` go with each claim when given, as a real worker sends them."""

    def __init__(
        self,
        http: httpx.Client,
        worker_id: str,
        study: str | None = None,
        *,
        device: str | None = None,
        host: str | None = None,
    ) -> None:
        self.http = http
        self.worker_id = worker_id
        self.study = study
        self.identity = {k: v for k, v in (("device", device), ("host", host)) if v is not None}

    def claim(self, **extra: Any) -> Claimed | None:
        """A trial, or None when the server has nothing to run (204)."""
        body = {"worker_id": self.worker_id, **self.identity, **extra}
        if self.study:
            body["study"] = self.study
        r = self.http.post(f"{API}/trials/claim", json=body)
        if r.status_code == 204:
            return None
        assert r.status_code == 200, r.text
        data = r.json()
        return Claimed(data["trial_id"], data["number"], data["params"], data)

    def next_trial(self, **extra: Any) -> Claimed:
        """Claim a trial that the test knows is there."""
        trial = self.claim(**extra)
        assert trial is not None, f"{self.worker_id} was given no trial"
        return trial

    def report(self, trial_id: int, epoch: int, val_loss: float, **extra: Any) -> httpx.Response:
        return self.http.post(
            f"{API}/trials/{trial_id}/report", json={"epoch": epoch, "val_loss": val_loss, **extra}
        )

    def heartbeat(self, trial_id: int) -> httpx.Response:
        return self.http.post(f"{API}/trials/{trial_id}/heartbeat")

    def complete(self, trial_id: int, val_loss: float, **extra: Any) -> httpx.Response:
        return self.http.post(
            f"{API}/trials/{trial_id}/complete", json={"val_loss": val_loss, **extra}
        )

    def fail(self, trial_id: int, reason: str, retry: bool = False) -> httpx.Response:
        return self.http.post(
            f"{API}/trials/{trial_id}/fail", json={"reason": reason, "retry": retry}
        )

    def run(self, trial: Claimed, losses: Sequence[float], accuracy: float | None = None) -> str:
        """Report `losses` epoch by epoch; complete with the last unless pruned. Returns the
        trial's end state."""
        for epoch, loss in enumerate(losses):
            r = self.report(trial.trial_id, epoch, loss)
            assert r.status_code == 200, r.text
            if r.json()["prune"]:
                return "pruned"
        extra = {"val_accuracy": accuracy} if accuracy is not None else {}
        r = self.complete(trial.trial_id, losses[-1], **extra)
        assert r.status_code == 200, r.text
        return "complete"


def trials(http: httpx.Client, study: str) -> list[dict[str, Any]]:
    r = http.get(f"{API}/studies/{study}/trials")
    assert r.status_code == 200, r.text
    return r.json()


def summary(http: httpx.Client, study: str) -> dict[str, Any]:
    r = http.get(f"{API}/studies/{study}")
    assert r.status_code == 200, r.text
    return r.json()
