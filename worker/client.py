"""The worker's HTTP client for the trial protocol.

Network errors, 5xx and 429 are retried with bounded exponential backoff (honouring
Retry-After), so a server restart or a database blip only delays a worker. A 4xx is never
retried blindly: 409 means the trial's lease ended, a 404 about the worker's own trial that the
trial is gone (its study was deleted): both end that trial, not the worker. Anything else is a
bug or a configuration error (a wrong token, a URL that is not an hpsearch server) worth
failing on."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # the trial module imports torch; the client needs only the name
    from worker.trial import Verdict

logger = logging.getLogger(__name__)


class ProtocolError(Exception):
    """The server refused a request (4xx other than 409)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"server answered {status}: {detail}")
        self.status = status
        self.detail = detail


class LeaseLost(ProtocolError):
    """409: the trial is finished or was given to another worker; stop working on it."""


class TrialGone(LeaseLost):
    """404 for a trial this worker holds: the server no longer has it (its study was deleted).
    Handled like a lost lease: stop working on it, claim the next."""


class ServerUnavailable(Exception):
    """The server could not be reached for longer than the retry budget."""


@dataclass(frozen=True)
class NotYet:
    """No trial now, but work is coming: ask again after `retry_after_s`."""

    retry_after_s: float


class ServerClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        worker_id: str | None = None,
        timeout: float = 60,
        retry_for_s: float = 900,
        max_backoff_s: float = 30,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._retry_for_s = retry_for_s
        # Sent with every message about a trial: the server refuses one about a trial id that
        # now names another worker's trial (SQLite reuses a deleted study's trial ids).
        self._worker_id = worker_id
        self._max_backoff_s = max_backoff_s

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry_for_s: float | None = None,
        trial: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """`trial`: the request is about a trial this worker holds, so a 404 means the trial is
        gone (TrialGone), not that the server is the wrong one."""
        if trial and self._worker_id:
            kwargs["params"] = {**kwargs.get("params", {}), "worker_id": self._worker_id}
        budget = self._retry_for_s if retry_for_s is None else retry_for_s
        deadline = time.monotonic() + budget
        delay = 0.5
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem, wait = f"{type(exc).__name__}", delay
            else:
                if response.status_code < 400:
                    return response
                detail = _detail(response)
                if response.status_code == 409:
                    raise LeaseLost(409, detail)
                if response.status_code == 404 and trial:
                    raise TrialGone(404, detail)
                if response.status_code < 500 and response.status_code != 429:
                    raise ProtocolError(response.status_code, detail)
                problem = f"{response.status_code} {detail}"
                wait = _retry_after(response) or delay
            if time.monotonic() + wait > deadline:
                raise ServerUnavailable(
                    f"{method} {path}: {problem} (gave up after {budget:.0f} s)"
                )
            logger.warning("%s %s: %s; retrying in %.1f s", method, path, problem, wait)
            time.sleep(wait * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._max_backoff_s)

    # --- the protocol --------------------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        study: str | None,
        device: str,
        host: str,
        labels: dict[str, str] | None = None,
        exclude: list[str] | None = None,
    ) -> dict[str, Any] | NotYet | None:
        """A trial; NotYet when the server says work is coming (204 with Retry-After: a
        study's preflight runs on another worker); or None: nothing to run. This worker runs
        preflights (`preflight`); it skips the studies in `exclude`."""
        body: dict[str, Any] = {
            "worker_id": worker_id,
            "study": study,
            "device": device,
            "host": host,
            "preflight": True,
        }
        if labels:  # only when there are some: a server without labels refuses the field
            body["labels"] = labels
        if exclude:
            body["exclude"] = exclude
        response = self._request("POST", "/api/v1/trials/claim", json=body)
        if response.status_code != 204:
            return response.json()
        retry_after = response.headers.get("retry-after")
        return NotYet(float(retry_after)) if retry_after and retry_after.isdigit() else None

    def report(
        self,
        trial_id: int,
        epoch: int,
        val_loss: float,
        val_accuracy: float | None,
        train_loss: float | None = None,
    ) -> Verdict:
        """What the server says to do next: continue, prune or pause."""
        body = {
            "epoch": epoch,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "train_loss": train_loss,
        }
        path = f"/api/v1/trials/{trial_id}/report"
        answer = self._request("POST", path, json=body, trial=True).json()
        if answer.get("pause"):
            return "pause"
        return "prune" if answer["prune"] else "continue"

    def pause(self, trial_id: int, epoch: int) -> None:
        """The trial stopped after `epoch`, as its report's answer asked, with the checkpoint
        of that epoch uploaded."""
        path = f"/api/v1/trials/{trial_id}/pause"
        self._request("POST", path, json={"epoch": epoch}, trial=True)

    def heartbeat(self, trial_id: int, retry_for_s: float) -> None:
        self._request(
            "POST", f"/api/v1/trials/{trial_id}/heartbeat", retry_for_s=retry_for_s, trial=True
        )

    def complete(
        self,
        trial_id: int,
        val_loss: float,
        val_accuracy: float | None,
        epoch: int | None = None,
        test: tuple[float, float] | None = None,
    ) -> None:
        """``epoch``: the epoch the values (and the uploaded weights) are of; ``test``: those
        weights' (loss, accuracy) on the test folder, when the data set has one."""
        body: dict[str, Any] = {"val_loss": val_loss, "val_accuracy": val_accuracy}
        if epoch is not None:
            body["epoch"] = epoch
        if test is not None:
            body["test_loss"], body["test_accuracy"] = test
        self._request("POST", f"/api/v1/trials/{trial_id}/complete", json=body, trial=True)

    def preflight(self, trial_id: int, result: dict[str, Any]) -> str:
        """Send a preflight's result ({ok, data} or {ok: false, fault, error}); returns the
        outcome: passed (train the trial), error or skipped (the server ended it)."""
        path = f"/api/v1/trials/{trial_id}/preflight"
        return str(self._request("POST", path, json=result, trial=True).json()["outcome"])

    def fail(self, trial_id: int, reason: str, *, retry: bool = False) -> None:
        # A 409 means it is already finished (or failed by the server), a 404 that it is gone:
        # nothing to hand back.
        with contextlib.suppress(LeaseLost):
            self._request(
                "POST",
                f"/api/v1/trials/{trial_id}/fail",
                json={"reason": reason[:4000], "retry": retry},
                trial=True,
            )

    def upload_checkpoint(self, trial_id: int, epoch: int, data: bytes) -> None:
        self._request(
            "PUT",
            f"/api/v1/trials/{trial_id}/checkpoint",
            params={"epoch": epoch},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            trial=True,
        )

    def upload_weights(self, trial_id: int, data: bytes) -> None:
        self._request(
            "PUT",
            f"/api/v1/trials/{trial_id}/weights",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            trial=True,
        )

    def download(self, path: str) -> bytes:
        return self._request("GET", path).content


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None
