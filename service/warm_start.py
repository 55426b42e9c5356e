"""Warm start: a new study begins from what an earlier one learned.

After the baseline, the source study's best complete configurations that fit the new space are
enqueued: they are the next trials handed out and count against n_trials like any trial. With
`history`, the source's complete trials that fit are also added to the new study as COMPLETE
trials marked `prior` (a user attr, shown in the dashboard), so the sampler (TPE, GP) models
them from the first claim. Prior trials are evidence only: the budget, the ranking (best,
baseline, kept weights) and the pruner leave them out (`is_prior`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service import keys
from service.search_space import SearchSpace, param_contains

if TYPE_CHECKING:  # the registry builds handles and calls this module at creation
    from service.registry import StudyHandle
    from service.spec import WarmStart


@dataclass(frozen=True)
class Seed:
    """What a new study takes from its source: configurations to run, trials to learn from."""

    enqueue: list[tuple[dict[str, Any], str]]  # (params, "<source> trial <number>")
    priors: list[FrozenTrial]


def is_prior(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(keys.PRIOR))


def fitting_params(
    config: dict[str, Any], space: SearchSpace, fixed: dict[str, Any]
) -> dict[str, Any] | None:
    """The params of the new space that run `config` (every hyperparameter of a source trial)
    exactly, or None when the new study cannot: a searched hyperparameter's value lies outside
    its new range, or another one differs from the new study's fixed value (`fixed`, its
    recipe)."""
    for name, value in config.items():
        param = space.root.get(name)
        if param is None:
            if name in fixed and value != fixed[name]:
                return None
        elif not param_contains(param, value):
            return None
    return {name: config[name] for name in space.root}


def plan(
    source: StudyHandle, target: StudyHandle, options: WarmStart, baseline: list[dict[str, Any]]
) -> Seed:
    """What `target`, a new study, takes from `source`. `baseline`: the params of its baseline
    (it runs them anyway), if it has one."""
    fits: list[tuple[FrozenTrial, dict[str, Any]]] = []
    for trial in source.study.get_trials(deepcopy=False):
        if trial.state != TrialState.COMPLETE or trial.value is None or is_prior(trial):
            continue  # a source's own priors ran in yet another study
        params = fitting_params(source.config(trial.params), target.space, target.recipe)
        if params is not None:
            fits.append((trial, params))
    room = target.spec.n_trials - len(baseline)  # they count against n_trials
    seen = [dict(p) for p in baseline]
    enqueue: list[tuple[dict[str, Any], str]] = []
    sign = -1.0 if source.spec.objective.direction == "maximize" else 1.0
    for trial, params in sorted(fits, key=lambda f: (sign * f[0].value, f[0].number)):  # type: ignore[operator]
        if len(enqueue) >= min(options.top_k, room):
            break
        if params not in seen:  # a configuration runs once
            seen.append(params)
            enqueue.append((params, f"{source.name} trial {trial.number}"))
    priors = (
        [
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=trial.value,
                params=params,
                distributions={name: target.distributions[name] for name in params},
                user_attrs={keys.PRIOR: f"{source.name} trial {trial.number}"},
            )
            for trial, params in fits
        ]
        if options.history
        else []
    )
    return Seed(enqueue, priors)
