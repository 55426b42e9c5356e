"""Two server processes on one database decide alike: the fair share and the priorities come
from counts in the database, and a change made through one process (PATCH) is what the other
decides by at its next claim."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import ServerFactory
from tests.scripted import API, ScriptedWorker, create_study


def test_two_processes_share_the_workers_by_weight_and_see_changes(
    server_factory: ServerFactory, storage_url: str, tmp_path: Path
) -> None:
    servers = [
        server_factory(
            storage_url, data_dir=tmp_path / f"server-{k}", process=True, lease_grace=600
        )
        for k in (0, 1)
    ]
    clients = [httpx.Client(base_url=s.url, timeout=60) for s in servers]
    try:
        for name, weight in (("light", 1), ("heavy", 3)):
            create_study(
                clients[0],
                name,
                n_trials=20,
                scheduling={"weight": weight},
                sampler={"name": "random", "seed": 0},
            )
        workers = [ScriptedWorker(c, f"w{k}") for k, c in enumerate(clients)]

        def claims(n: int) -> Counter[str | None]:
            got: Counter[str | None] = Counter()
            for i in range(n):  # the two processes take turns
                trial = workers[i % 2].claim()
                got[trial.body["study"] if trial else None] += 1
            return got

        assert claims(8) == {"light": 2, "heavy": 6}
        # Process 1 opened both studies; a change through process 0 is what it decides by.
        r = clients[0].patch(
            f"{API}/studies/light", json={"scheduling": {"priority": 1}, "n_trials": 4}
        )
        assert r.status_code == 200, r.text
        assert claims(4) == {"light": 2, "heavy": 2}  # light's budget: 4 in all, 2 were out
        summary = clients[1].get(f"{API}/studies/light").json()
        assert (summary["n_trials"], summary["priority"]) == (4, 1)
    finally:
        for c in clients:
            c.close()
