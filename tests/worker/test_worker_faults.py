"""The worker survives a 503 and dropped connections from the server."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests.chaos_proxy import ChaosProxy
from tests.servers import digits_spec
from tests.workers import start_worker


def _faults(method: str, kind: str, count: int) -> str | None:
    if kind == "report" and count == 1:
        return "503"
    if kind == "report" and count == 2:
        return "drop"  # the request never reaches the server
    if kind == "complete" and count == 1:
        return "drop"
    if kind == "claim" and count == 1:
        return "503"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_worker_rides_out_503_and_dropped_connections(server, api, tmp_path):
    spec = digits_spec(
        "chaos",
        n_trials=1,
        training={"epochs": 2, "seed": 0},
        baseline=False,
        data={"kind": "digits", "classes": [0, 1, 2], "image_size": 16, "batch_size": 64},
    )
    assert api.post("/api/v1/studies", json=spec).status_code == 201
    with ChaosProxy(server.url, _faults) as proxy:
        worker = start_worker(proxy.url, tmp_path / "worker.log", "--exit-when-idle")
        code = worker.wait(timeout=300)
        log = (tmp_path / "worker.log").read_text()
        assert code == 0, log[-3000:]
    kinds = [(path.rsplit("/", 1)[-1], fault) for _, path, fault in proxy.faults]
    assert ("claim", "503") in kinds and ("report", "503") in kinds
    assert ("report", "drop") in kinds and ("complete", "drop") in kinds
    assert "Traceback" not in log
    trial = optuna.load_study(study_name="chaos", storage=server.storage).trials[0]
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1]
