"""The replay benchmark (bench/replay.py) on a small synthetic learning-curve table this test
writes: reproducible for a seed, inside its epoch budget, and in promotion mode it resumes
paused trials through service.asha."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from bench.asha_replay import BLIND, PROMOTION, RANDOM, policies
from bench.curve_table import CurveTable, save_table
from bench.replay import Policy, replay
from service.pausing import PausedAsPruned

EPOCHS = 9  # asha rungs at 1 and 3 epochs
CONFIGS = 40
SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "momentum": {"type": "float", "low": 0.8, "high": 0.99},
}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> CurveTable:
    """Curves that fall from `start` to `end`, fast or slowly: slow starters end best when
    their lr is low, so the table has late bloomers."""
    rng = np.random.default_rng(0)
    params, curves = [], []
    for _ in range(CONFIGS):
        lr = float(10 ** rng.uniform(-3, -1))
        momentum = float(rng.uniform(0.8, 0.99))
        end = 0.3 + abs(math.log10(lr) + 2.2) * 0.4 + rng.uniform(0, 0.1)
        rate = 0.2 + 2 * lr / 0.1
        start = 2.0
        loss = [end + (start - end) * math.exp(-rate * (e + 1)) for e in range(EPOCHS)]
        params.append({"lr": lr, "momentum": momentum})
        curves.append(
            {"val_loss": loss, "val_accuracy": [0.5] * EPOCHS, "seconds": [0.01] * EPOCHS}
        )
    path = tmp_path_factory.mktemp("curves") / "curves.json.gz"
    save_table(path, {"epochs": EPOCHS, "search_space": SPACE}, params, curves)
    return CurveTable.load(path)


def by_name(name: str) -> Policy:
    return next(p for p in policies() if p.name == name)


def test_the_table_snaps_proposals_to_its_configurations(table: CurveTable) -> None:
    assert table.size == CONFIGS and table.epochs == EPOCHS
    for row in (0, 7, 31):
        assert table.nearest(table.params[row]) == row
        assert table.nearest(table.params[row], exclude={row}) != row
    assert table.late_bloomers(), "the synthetic table has slow starters among its best"


@pytest.mark.parametrize("policy", [p.name for p in policies()])
def test_a_replay_is_reproducible_and_stays_inside_its_budget(
    table: CurveTable, policy: str
) -> None:
    budget = 7 * EPOCHS + 4  # not a multiple of the workers' count: the last unit is partial
    first = replay(table, by_name(policy), seed=3, budget=budget, workers=4)
    again = replay(table, by_name(policy), seed=3, budget=budget, workers=4)
    assert first == again
    assert first.trained == budget
    assert all(0 < trained <= budget for trained, _, _ in first.completed)
    assert first.configurations == len(first.sampled) >= len(first.completed)
    other = replay(table, by_name(policy), seed=4, budget=budget, workers=4)
    assert other.sampled != first.sampled


def test_promotion_resumes_paused_trials_and_stopping_does_not(table: CurveTable) -> None:
    budget = 20 * EPOCHS
    promoted = replay(table, by_name(PROMOTION), seed=0, budget=budget)
    stopped = replay(table, by_name("TPE + asha stopping"), seed=0, budget=budget)
    assert promoted.promotions > 0
    assert stopped.promotions == stopped.completed_promoted == 0
    # a resumed trial trains on from its rung to the end
    assert 0 < promoted.completed_promoted <= min(promoted.promotions, len(promoted.completed))
    assert promoted.trained == stopped.trained == budget


def test_a_search_stops_once_it_finds_the_target(table: CurveTable) -> None:
    target = float(np.sort(table.final)[2])  # any of the best three
    out = replay(
        table, by_name(RANDOM), seed=1, budget=100 * EPOCHS, target=target, stop_when_found=True
    )
    assert out.found is not None and out.found == out.trained == out.epochs_to(target)
    assert out.epochs_to(math.inf) == out.completed[0][0] <= out.found
    assert min(loss for _, _, loss in out.completed) <= target


def test_fresh_snapping_never_samples_a_configuration_twice(table: CurveTable) -> None:
    out = replay(table, by_name("TPE + median"), seed=0, budget=30 * EPOCHS, fresh=True)
    assert out.configurations > CONFIGS  # the table runs out: then configurations repeat
    first = out.sampled[:CONFIGS]
    assert len(set(first)) == CONFIGS
    nearest = replay(table, by_name("TPE + median"), seed=0, budget=30 * EPOCHS)
    assert len(set(nearest.sampled[:CONFIGS])) < CONFIGS  # TPE proposes close points again


def test_a_table_written_twice_is_the_same_bytes(tmp_path: Path, table: CurveTable) -> None:
    curves = [{"val_loss": list(c), "val_accuracy": [0.5] * EPOCHS} for c in table.val_loss]
    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    save_table(a, table.meta, table.params, curves)
    save_table(b, table.meta, table.params, curves)
    assert a.read_bytes() == b.read_bytes()


def test_the_sampler_view_shows_paused_trials_as_pruned_and_leaves_the_study() -> None:
    study = optuna.create_study()
    paused, running, done = (study.ask({"x": FloatDistribution(0, 1)}) for _ in range(3))
    for trial in (paused, running, done):
        trial.report(0.5, 0)
    study.tell(done, 0.5)
    view = PausedAsPruned(study, lambda t: t.number == paused.number)
    shown = {t.number: t.state for t in view._get_trials(deepcopy=False)}
    assert shown == {
        paused.number: TrialState.PRUNED,
        running.number: TrialState.RUNNING,
        done.number: TrialState.COMPLETE,
    }
    pruned = view.get_trials(states=(TrialState.PRUNED,))
    assert [t.number for t in pruned] == [paused.number]
    assert pruned[0].intermediate_values == {0: 0.5}  # TPE ranks it by its last report
    assert study.trials[paused.number].state == TrialState.RUNNING


def test_tpe_that_sees_paused_trials_leaves_random_search_sooner(table: CurveTable) -> None:
    """Under promotion most trials wait paused (RUNNING): TPE counts none of them among its
    startup trials, unless the sampler is shown them as pruned."""
    blind = replay(table, by_name(BLIND), seed=0, budget=10 * EPOCHS)
    seeing = replay(table, by_name(PROMOTION), seed=0, budget=10 * EPOCHS)
    assert blind.sampled[:10] == seeing.sampled[:10]  # both random while < 10 trials are seen
    assert blind.sampled != seeing.sampled
