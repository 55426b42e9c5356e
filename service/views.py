"""Public views of Optuna trials and studies."""

from __future__ import annotations

import datetime as dt
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from service import keys
from service import optuna_internals as internals
from service.registry import StudyHandle
from service.schemas import BestTrial, TrialPublic
from service.warm_start import is_prior


def state_name(state: TrialState) -> str:
    return state.name.lower()


def is_paused(trial: FrozenTrial) -> bool:
    """Paused by the asha pruner: RUNNING to Optuna, held by no worker."""
    return (
        trial.state == TrialState.RUNNING
        and trial.user_attrs.get(keys.PAUSED_AFTER_EPOCH) is not None
    )


def public_state(trial: FrozenTrial) -> str:
    return "paused" if is_paused(trial) else state_name(trial.state)


def local_time(moment: dt.datetime | None) -> dt.datetime | None:
    """An Optuna timestamp (the server's local time, stored without a zone) with its zone."""
    return moment.astimezone() if moment is not None and moment.tzinfo is None else moment


def utc_time(moment: dt.datetime | None) -> dt.datetime | None:
    """One of hpsearch's own timestamps (UTC, stored without a zone) with its zone."""
    return moment.replace(tzinfo=dt.UTC) if moment is not None and moment.tzinfo is None else moment


def duration_s(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def retry_of(trial: FrozenTrial) -> int | None:
    history = trial.system_attrs.get(keys.RETRY_HISTORY) or []
    return history[-1] if history else None


def val_loss(trial: FrozenTrial, metric: str = "val_loss") -> float | None:
    """The trial's validation loss: its value when the objective is val_loss, else the one
    the worker last reported (or completed with)."""
    if metric != "val_loss":
        return trial.user_attrs.get(keys.VAL_LOSS)
    if trial.value is not None:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def value_epoch(trial: FrozenTrial) -> int | None:
    """The epoch whose metrics the trial keeps: the one the worker named, else the last."""
    epoch = trial.user_attrs.get(keys.OBJECTIVE_EPOCH)
    if epoch is not None:
        return int(epoch)
    if trial.state == TrialState.COMPLETE and trial.intermediate_values:
        return max(trial.intermediate_values)
    return None


def trial_public(handle: StudyHandle, trial: FrozenTrial, top_k: set[int]) -> TrialPublic:
    """`top_k`: the numbers of the trials whose final weights are kept."""
    attrs = trial.user_attrs
    return TrialPublic(
        trial_id=internals.trial_id(trial),
        number=trial.number,
        state=public_state(trial),  # type: ignore[arg-type]
        params=trial.params,
        config=handle.config(trial.params),
        val_loss=val_loss(trial, handle.spec.objective.metric),
        val_accuracy=attrs.get(keys.VAL_ACCURACY),
        epochs=len(trial.intermediate_values),
        intermediate_values=dict(sorted(trial.intermediate_values.items())),
        value=trial.value,
        value_epoch=value_epoch(trial),
        train_loss=keys.train_losses(attrs),
        is_baseline=bool(attrs.get(keys.BASELINE)),
        prior=is_prior(trial),
        worker=attrs.get(keys.WORKER),
        device=attrs.get(keys.DEVICE),
        retry_of=retry_of(trial),
        resumed_from_epoch=attrs.get(keys.RESUMED_FROM_EPOCH),
        paused_after_epoch=attrs.get(keys.PAUSED_AFTER_EPOCH),
        promotions=int(attrs.get(keys.PROMOTIONS) or 0),
        fail_reason=attrs.get(keys.FAIL_REASON),
        started_at=local_time(trial.datetime_start),
        finished_at=local_time(trial.datetime_complete),
        duration_s=duration_s(trial),
        has_weights=keys.WEIGHTS in trial.system_attrs
        and (trial.state == TrialState.RUNNING or trial.number in top_k),
    )


def training_config(handle: StudyHandle, params: dict[str, Any]) -> dict[str, Any]:
    """A complete, self-contained training config: what a worker needs to train this trial."""
    spec = handle.spec
    hparams = handle.config(params)
    return {
        "model": spec.model.model_dump(mode="json"),
        "data": {**spec.data.model_dump(mode="json"), "batch_size": hparams["batch_size"]},
        "training": spec.training.model_dump(mode="json"),
        "hparams": hparams,
    }


def improvement_pct(best: float | None, baseline: float | None, direction: str) -> float | None:
    """How much better than the baseline's the best value is, in percent (positive: better)."""
    if best is None or baseline is None or baseline == 0:
        return None
    gain = baseline - best if direction == "minimize" else best - baseline
    return round(100.0 * gain / abs(baseline), 3)


def best_trial(handle: StudyHandle, trial: FrozenTrial, baseline_value: float | None) -> BestTrial:
    """`baseline_value`: the baseline trial's objective value, if it has completed."""
    assert trial.value is not None
    loss = val_loss(trial, handle.spec.objective.metric)
    return BestTrial(
        number=trial.number,
        params=trial.params,
        value=trial.value,
        value_epoch=value_epoch(trial),
        val_loss=trial.value if loss is None else loss,
        val_accuracy=trial.user_attrs.get(keys.VAL_ACCURACY),
        test_loss=trial.user_attrs.get(keys.TEST_LOSS),
        test_accuracy=trial.user_attrs.get(keys.TEST_ACCURACY),
        epochs=len(trial.intermediate_values),
        duration_s=duration_s(trial),
        is_baseline=bool(trial.user_attrs.get(keys.BASELINE)),
        improvement_over_baseline_pct=improvement_pct(
            trial.value, baseline_value, handle.spec.objective.direction
        ),
        config=training_config(handle, trial.params),
    )


def ranked(handle: StudyHandle, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials by their objective value, best first in the study's direction (pruned
    ones stopped early: they are not comparable; prior trials ran in another study)."""
    direction = handle.spec.objective.direction
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and not is_prior(t)
    ]
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(done, key=lambda t: (sign * t.value, t.number))  # type: ignore[operator]


def baseline_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    for trial in trials:
        if trial.user_attrs.get(keys.BASELINE) and trial.state == TrialState.COMPLETE:
            return trial
    return None
