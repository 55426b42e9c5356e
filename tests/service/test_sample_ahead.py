"""Sampling ahead (`service.sample_ahead`): with one worker, the params each trial gets are the
ones sampling at claim time gave (plain Optuna's ask/tell with the same seed); a configuration
sampled before more than MAX_LAG trials finished (in any process) is not handed out; the
configurations held are constant liar's evidence for the next samples. Real storage and
server on both backends."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import optuna
from optuna.trial import TrialState

from service import optuna_internals as internals
from service import sample_ahead
from service.registry import StudyHandle, StudyRegistry
from service.settings import Settings
from service.spec import StudySpec
from service.storage import Backend
from service.trial_cache import SamplerView
from tests.scripted import ScriptedWorker, create_study, unique
from tests.servers import digits_spec
from tests.service.conftest import ServerStarter, StorageMaker

TPE = {"name": "tpe", "seed": 3, "n_startup_trials": 3}


def _loss(params: dict) -> float:
    return abs(params["lr"] - 0.05) + abs(params["momentum"] - 0.9)


def test_one_worker_gets_what_plain_optuna_samples(
    new_storage: StorageMaker, start_server: ServerStarter
) -> None:
    storage = new_storage()
    server = start_server(storage)
    name = unique("ahead-solo")
    got = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        create_study(http, name, sampler=TPE, pruner={"name": "none"}, baseline=False, n_trials=12)
        worker = ScriptedWorker(http, "solo", study=name)
        while (trial := worker.claim()) is not None:
            assert worker.complete(trial.trial_id, _loss(trial.params)).status_code == 200
            got.append(trial.params)
    assert len(got) == 12
    stored = optuna.load_study(study_name=name, storage=storage).trials[0].distributions
    plain = optuna.create_study(
        sampler=optuna.samplers.TPESampler(
            seed=3, n_startup_trials=3, multivariate=True, constant_liar=True
        )
    )
    for number, params in enumerate(got):
        asked = plain.ask({k: stored[k] for k in params})  # in the order the claim gave them
        assert asked.params == params, number
        plain.tell(asked, _loss(asked.params))


def _handle(backend: Backend, tmp_path: Path, name: str) -> StudyHandle:
    registry = StudyRegistry(backend, Settings(storage=str(backend._rdb.url), data_dir=tmp_path))
    spec = digits_spec(name, sampler=TPE, pruner={"name": "none"}, baseline=False, n_trials=50)
    return registry.create(StudySpec.model_validate(spec))


def _wait_sampled(handle: StudyHandle, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(handle.ahead.pending(handle.distributions)) < count:
        assert time.monotonic() < deadline, "nothing was sampled ahead"
        time.sleep(0.01)


def _claim(backend: Backend, handle: StudyHandle) -> dict:
    trial = optuna.trial.Trial(handle.study, backend.create_running_trial(handle.study, {}))
    sample_ahead.fill(backend, handle, trial)
    stored = backend.trial(internals.trial_id(trial))
    assert stored.params == trial.params and stored.params.keys() == handle.distributions.keys()
    return stored.params


def test_stale_configurations_are_not_handed_out(
    fresh_url: str, backend_store: Backend, tmp_path: Path
) -> None:
    handle = _handle(backend_store, tmp_path, "ahead-stale")
    other = optuna.load_study(study_name=handle.name, storage=fresh_url)  # another process
    for _ in range(5):
        _claim(backend_store, handle)
    for trial in other.get_trials(states=(TrialState.RUNNING,)):
        other.tell(trial.number, _loss(trial.params))

    # One finished since it was sampled (MAX_LAG): handed out.
    sample_ahead.after_finish(backend_store, handle)
    _wait_sampled(handle, 1)
    [pooled] = handle.ahead.pending(handle.distributions)
    finished = other.ask()
    other.tell(finished, 0.3)
    assert _claim(backend_store, handle) == pooled.params
    assert handle.ahead.pending(handle.distributions) == []

    # Two finished since: sampled afresh instead.
    sample_ahead.after_finish(backend_store, handle)
    _wait_sampled(handle, 1)
    [pooled] = handle.ahead.pending(handle.distributions)
    for value in (0.2, 0.4):
        finished = other.ask()
        other.tell(finished, value)
    assert sample_ahead.MAX_LAG == 1
    assert _claim(backend_store, handle) != pooled.params
    assert handle.ahead.pending(handle.distributions) == []


def test_held_configurations_are_constant_liar_evidence(
    backend_store: Backend, tmp_path: Path
) -> None:
    handle = _handle(backend_store, tmp_path, "ahead-liar")
    for _ in range(4):
        trial = optuna.trial.Trial(
            handle.study, backend_store.create_running_trial(handle.study, {})
        )
        sample_ahead.fill(backend_store, handle, trial)
        handle.study.tell(trial, _loss(trial.params))
    sample_ahead.after_finish(backend_store, handle)
    sample_ahead.after_finish(backend_store, handle)
    _wait_sampled(handle, 2)
    pending = handle.ahead.pending(handle.distributions)
    trials, _ = handle.trials.snapshot(backend_store, handle.study)
    view = SamplerView(handle.study, trials, pending)
    running = view._get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t.params for t in running] == [a.params for a in pending]
    # The search space's read (all states) is the stored trials only.
    assert view._get_trials(deepcopy=False) == trials
    assert len({tuple(a.params.items()) for a in pending}) == 2
