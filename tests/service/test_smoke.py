from __future__ import annotations

import optuna

from tests.servers import digits_spec


def test_create_and_load_back(api, server):
    r = api.post("/api/v1/studies", json=digits_spec("smoke"))
    assert r.status_code == 201, r.text
    study = optuna.load_study(study_name="smoke", storage=server.storage)
    assert study.user_attrs["spec"]["name"] == "smoke"
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING]
