from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from tests.worker.jobs import BASE_JOB
from worker.data import DataCache
from worker.engine import Caches
from worker.models import WeightsCache
from worker.trial import TrialJob

JobFactory = Callable[..., TrialJob]


@pytest.fixture(scope="session")
def shared_data() -> DataCache:
    """One decoded digits set for the whole session, as a worker process would keep it."""
    return DataCache()


@pytest.fixture
def caches(shared_data: DataCache) -> Caches:
    return Caches(data=shared_data, weights=WeightsCache(allow_download=False))


@pytest.fixture
def make_job() -> JobFactory:
    """``make_job(seed=1, hparams={"lr": 1.0}, ...)``: the tiny base job, sections updated."""

    def make(seed: int = 0, **sections: dict[str, Any]) -> TrialJob:
        spec = copy.deepcopy(BASE_JOB)
        for name, values in sections.items():
            spec[name].update(values)
        hparams = spec.pop("hparams")
        return TrialJob.from_parts(spec, hparams, seed)

    return make


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network for weights."""

    def refuse(url: str, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"test tried to download {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and OpenMP threads slow to a crawl on a
    busy machine; the engine itself leaves the thread count alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
