"""The two kinds of client process the benchmarks run, each bounded in trials and in time:

- `http_client`: a scripted hpsearch worker over HTTP with its own httpx client: claim, one
  report per epoch (stopping when told to prune), complete.
- `raw_client`: what people write with Optuna directly: its own RDBStorage, then
  study.ask(fixed distributions), trial.report + trial.should_prune per epoch, study.tell.

Both compute the same synthetic loss and neither ever sleeps except after an error."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from bench.harness import (
    API,
    EPOCHS,
    ClientResult,
    distributions,
    raw_pruner,
    raw_sampler,
    raw_storage,
    synthetic_loss,
)

SETUP_TIMEOUT_S = 120.0
ERROR_PAUSE_S = 0.05  # after a failed call, so a dead server is not hammered
GRACE_S = 10.0  # how long past its deadline a client may finish the trial it is in


@dataclass(frozen=True)
class HttpClientConfig:
    base_url: str
    study: str
    worker_id: str
    max_trials: int
    duration_s: float
    epochs: int = EPOCHS
    timeout_s: float = 30.0
    token: str | None = None


@dataclass(frozen=True)
class RawClientConfig:
    storage_url: str
    study: str
    max_trials: int
    duration_s: float
    epochs: int = EPOCHS


# --- over HTTP -------------------------------------------------------------------------------
def _post(
    http: httpx.Client, kind: str, path: str, body: dict[str, Any], result: ClientResult
) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        response = http.post(path, json=body)
    except httpx.HTTPError as exc:
        result.failed(exc)
        time.sleep(ERROR_PAUSE_S)
        return None
    result.timed(kind, time.perf_counter() - start)
    result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
    return response


def _http_trial(
    http: httpx.Client, cfg: HttpClientConfig, result: ClientResult, hard_stop: float
) -> None:
    claim = _post(
        http,
        "claim",
        f"{API}/trials/claim",
        {"worker_id": cfg.worker_id, "study": cfg.study},
        result,
    )
    if claim is None or claim.status_code != 200:
        time.sleep(ERROR_PAUSE_S)  # 204 (nothing to run) or an error
        return
    trial = claim.json()
    trial_id, params = trial["trial_id"], trial["params"]
    for epoch in range(cfg.epochs):
        if time.monotonic() > hard_stop:
            return  # abandon it: the server's lease sweep fails it later
        loss = synthetic_loss(params, epoch)
        report = _post(
            http,
            "report",
            f"{API}/trials/{trial_id}/report",
            {"epoch": epoch, "val_loss": loss},
            result,
        )
        if report is None or report.status_code != 200:
            return
        if report.json()["prune"]:
            result.trials += 1
            result.pruned += 1
            return
    done = _post(
        http,
        "complete",
        f"{API}/trials/{trial_id}/complete",
        {"val_loss": synthetic_loss(params, cfg.epochs - 1)},
        result,
    )
    if done is not None and done.status_code == 200:
        result.trials += 1


def http_client(cfg: HttpClientConfig, barrier: Any) -> ClientResult:
    headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
    with httpx.Client(base_url=cfg.base_url, timeout=cfg.timeout_s, headers=headers) as http:
        http.get("/healthz").raise_for_status()  # connect before the clock starts
        barrier.wait(timeout=SETUP_TIMEOUT_S)
        result = ClientResult(started=time.monotonic())
        deadline = result.started + cfg.duration_s
        while result.trials < cfg.max_trials and time.monotonic() < deadline:
            _http_trial(http, cfg, result, deadline + GRACE_S)
        result.ended = time.monotonic()
    return result


# --- raw Optuna ------------------------------------------------------------------------------
def _raw_trial(
    study: optuna.Study, dists: dict[str, Any], cfg: RawClientConfig, result: ClientResult
) -> None:
    start = time.perf_counter()
    trial = study.ask(fixed_distributions=dists)
    result.timed("ask", time.perf_counter() - start)
    try:
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            trial.report(synthetic_loss(trial.params, epoch), epoch)
            # As the service does: the last epoch completes the trial, it is not pruned.
            prune = epoch < cfg.epochs - 1 and trial.should_prune()
            result.timed("report", time.perf_counter() - start)
            if prune:
                start = time.perf_counter()
                study.tell(trial, state=TrialState.PRUNED)
                result.timed("tell", time.perf_counter() - start)
                result.pruned += 1
                result.trials += 1
                return
        start = time.perf_counter()
        study.tell(trial, synthetic_loss(trial.params, cfg.epochs - 1))
        result.timed("tell", time.perf_counter() - start)
        result.trials += 1
    except Exception:
        with contextlib.suppress(Exception):  # best effort: do not leave it running
            study.tell(trial, state=TrialState.FAIL)
        raise


def raw_client(cfg: RawClientConfig, barrier: Any) -> ClientResult:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial on the console
    study = optuna.load_study(
        study_name=cfg.study,
        storage=raw_storage(cfg.storage_url),
        sampler=raw_sampler(),
        pruner=raw_pruner(),
    )
    dists = distributions()
    study.get_trials(deepcopy=False)  # connect before the clock starts
    barrier.wait(timeout=SETUP_TIMEOUT_S)
    result = ClientResult(started=time.monotonic())
    deadline = result.started + cfg.duration_s
    while result.trials < cfg.max_trials and time.monotonic() < deadline:
        try:
            _raw_trial(study, dists, cfg, result)
        except Exception as exc:  # e.g. SQLite's "database is locked"
            result.failed(exc)
            time.sleep(ERROR_PAUSE_S)
    result.ended = time.monotonic()
    return result
