"""Request and response bodies of the public API. Routes never return Optuna objects."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from service import keys
from service.spec import Scheduling

Finite = Field(allow_inf_nan=False)
# Whole seconds stay integers on the wire (as they were before sub-second leases existed).
Seconds = Annotated[
    float, PlainSerializer(lambda v: int(v) if v.is_integer() else v, return_type=int | float)
]
WORKER_ID = keys.WORKER_ID_PATTERN
TrialStateName = Literal["waiting", "running", "paused", "complete", "pruned", "fail"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorItem(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None
    errors: list[ErrorItem] = []


class TrialPublic(BaseModel):
    trial_id: int
    number: int
    state: TrialStateName
    params: dict[str, Any]
    config: dict[str, Any] = Field(description="Every hyperparameter the trial trained with")
    val_loss: float | None
    val_accuracy: float | None
    epochs: int = Field(description="Epochs reported")
    intermediate_values: dict[int, float] = Field(
        description="The objective's metric by epoch (0-based): the validation loss unless "
        "objective.metric is val_accuracy"
    )
    value: float | None = Field(
        None, description="The trial's objective value (objective.metric at objective.epoch)"
    )
    value_epoch: int | None = Field(
        None, description="The epoch whose metrics (and weights) the trial keeps, when known"
    )
    train_loss: dict[int, float] = Field(
        default_factory=dict, description="Training loss by epoch, as the worker reported it"
    )
    is_baseline: bool
    prior: bool = Field(
        False,
        description="Prior evidence from a warm start's source study, given to the "
        "sampler: not run here, never counted in n_trials nor ranked",
    )
    worker: str | None
    device: str | None
    retry_of: int | None = Field(description="Number of the trial this one retries")
    resumed_from_epoch: int | None = Field(description="First epoch this trial trained itself")
    paused_after_epoch: int | None = Field(
        None,
        description="Pruner asha: the (0-based) epoch it paused after, while paused or when it "
        "ended paused",
    )
    promotions: int = Field(0, description="Pruner asha: how many times it was resumed")
    fail_reason: str | None
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
    duration_s: float | None
    has_weights: bool


class BestTrial(BaseModel):
    number: int
    params: dict[str, Any]
    value: float | None = Field(
        None, description="The objective value the trial is ranked by (objective.metric)"
    )
    value_epoch: int | None = Field(
        None, description="The epoch whose metrics (and weights) the trial keeps, when known"
    )
    val_loss: float
    val_accuracy: float | None
    test_loss: float | None = Field(
        None,
        description="The kept weights on the test folder (null without one); never "
        "used for selection, and not shown in the trial list",
    )
    test_accuracy: float | None = None
    epochs: int
    duration_s: float | None
    is_baseline: bool
    improvement_over_baseline_pct: float | None
    config: dict[str, Any] = Field(description="A complete training config that reproduces it")


class TrialCounts(BaseModel):
    waiting: int = 0
    running: int = 0
    paused: int = Field(0, description="Paused by the asha pruner, waiting for a promotion")
    complete: int = 0
    pruned: int = 0
    fail: int = 0


class StudyData(BaseModel):
    """What a study's passed preflight found in its data set."""

    classes: list[str] = Field(max_length=100_000)
    train_images: int = Field(ge=0)
    val_images: int = Field(ge=0)
    test_images: int = Field(0, ge=0)
    skipped_images: int = Field(
        0, ge=0, description="Undecodable files left out (data.on_bad_image: skip)"
    )


class StudyPublic(BaseModel):
    name: str
    state: Literal["running", "stopped", "done", "error"]
    state_reason: str | None = Field(
        None,
        description="Why no new trials are handed out (the budget is spent, the grid "
        "is exhausted, too many failures, stopped, the preflight failed); null while they are",
    )
    error: str | None = Field(
        None,
        description="In state error: why the spec cannot be trained, as the preflight "
        "found it; `resume` runs the preflight again",
    )
    preflight: Literal["pending", "passed"] = Field(
        "passed",
        description="Whether a worker has checked the data, the model and one "
        "training step; until then one trial at a time runs, as that check",
    )
    data: StudyData | None = Field(
        None, description="What the preflight found in the data set; null until it passed"
    )
    n_trials: int
    finished: int = Field(description="COMPLETE + PRUNED trials, what n_trials counts")
    counts: TrialCounts
    best: BestTrial | None
    baseline: BestTrial | None
    improvement_over_baseline_pct: float | None = Field(
        description="How much lower the best val loss is than the baseline's, in percent"
    )
    dashboard_url: str
    created_at: AwareDatetime | None
    spec: dict[str, Any]
    priority: int = Field(0, description="spec.scheduling.priority")
    weight: float = Field(1.0, description="spec.scheduling.weight")


class StudyPatch(_In):
    """PATCH /studies/{name}: the fields given change, the others stay."""

    n_trials: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="The new budget; never below the trials finished, running or waiting",
    )
    scheduling: Scheduling | None = Field(
        None, description="The fields of spec.scheduling given change; the others stay"
    )


class BestList(BaseModel):
    study: str
    baseline: BestTrial | None
    trials: list[BestTrial]
    objective: dict[str, str] | None = Field(
        None, description="The spec's objective ({metric, epoch}): what the trials rank by"
    )


class TrialClaim(_In):
    worker_id: str = Field(pattern=WORKER_ID)
    study: str | None = Field(None, pattern=keys.STUDY_NAME_PATTERN)
    device: str | None = Field(None, max_length=64)
    host: str | None = Field(None, max_length=255)
    labels: dict[
        Annotated[str, Field(pattern=keys.LABEL_KEY_PATTERN)],
        Annotated[str, Field(pattern=keys.LABEL_VALUE_PATTERN)],
    ] = Field(
        default_factory=dict,
        max_length=keys.MAX_LABELS,
        description="The worker's labels; a study's scheduling.requires must match them",
    )
    preflight: bool = Field(
        False,
        description="The worker runs a study's preflight when its claim answer says "
        "so (hpsearch worker does). A study whose preflight has not passed hands such workers "
        "one trial at a time, flagged preflight; claims without it are served as before",
    )
    exclude: list[Annotated[str, Field(pattern=keys.STUDY_NAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=1000,
        description="Studies this worker skips (its preflight found its machine lacking)",
    )


class Resume(BaseModel):
    epoch: int = Field(
        description="The last epoch the checkpoint holds; training continues after it"
    )
    checkpoint_url: str


class ClaimedTrial(BaseModel):
    """A trial to train, with every value resolved by the server: a worker keeps no defaults."""

    trial_id: int
    study: str
    number: int
    params: dict[str, Any] = Field(description="The hyperparameters sampled (or fixed) for it")
    config: dict[str, Any] = Field(
        description="Every hyperparameter the trial trains with: the recipe overridden by "
        "params; batch_size included (the baseline's, else data.batch_size)"
    )
    spec: dict[str, Any] = Field(
        description="The study spec with every default filled in; the trial's batch size is "
        "config.batch_size"
    )
    seed: int = Field(description="training.seed")
    is_baseline: bool
    heartbeat_interval: Seconds
    resume: Resume | None
    preflight: bool = Field(
        False,
        description="Check the study before training this trial and POST the result "
        "to /trials/{trial_id}/preflight; train it only if the check passed",
    )


class PreflightResult(_In):
    """A preflight's outcome: ok with what it found, or the fault and its error. A `spec`
    fault (the data set, the model) puts the study in error; a `worker` fault (this machine
    lacks the data root, the weights file or the memory) makes this worker skip the study."""

    ok: bool
    data: StudyData | None = None
    fault: Literal["spec", "worker"] | None = None
    error: str | None = Field(None, min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _complete(self) -> PreflightResult:
        if self.ok and self.data is None:
            raise ValueError("a passed preflight sends its data")
        if not self.ok and (self.fault is None or self.error is None):
            raise ValueError("a failed preflight sends its fault and error")
        return self


class PreflightAnswer(BaseModel):
    study: str
    outcome: Literal["passed", "error", "skipped"] = Field(
        description="passed: train the trial; error: the study is in error and the trial "
        "failed; skipped: the trial was handed back and this worker skips the study"
    )


class TrialReport(_In):
    epoch: int = Field(ge=0, le=100_000, description="0-based epoch index")
    val_loss: float = Finite
    val_accuracy: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    train_loss: float | None = Field(None, allow_inf_nan=False)


class ReportAnswer(BaseModel):
    prune: bool = Field(description="Stop training: the trial is pruned")
    pause: bool = Field(
        False,
        description="Stop training for now (pruner asha, promotion mode): upload the "
        "checkpoint of this epoch, then POST /trials/{trial_id}/pause; the trial may be "
        "promoted later and resumed from it",
    )


class TrialPause(_In):
    epoch: int = Field(ge=0, le=100_000, description="The epoch the trial paused after")


class TrialComplete(_In):
    val_loss: float = Finite
    val_accuracy: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    epoch: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="The 0-based epoch these values (and the weights uploaded) are of: the "
        "best epoch under objective.epoch best; the last when not given",
    )
    test_loss: float | None = Field(
        None,
        allow_inf_nan=False,
        description="The kept weights' loss on the data set's test folder, when it has one: "
        "reported by `best`, never used for ranking, pruning or the budget",
    )
    test_accuracy: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class TrialFail(_In):
    reason: str = Field(min_length=1, max_length=4000)
    retry: bool = Field(False, description="Hand the trial back: re-queue it with the same params")


class TrialAck(BaseModel):
    trial_id: int
    state: TrialStateName


class HeartbeatAnswer(BaseModel):
    trial_id: int
    heartbeat_interval: Seconds


class WorkerPublic(BaseModel):
    worker_id: str
    host: str | None
    device: str | None
    study: str | None
    trial_number: int | None
    last_seen: AwareDatetime
    labels: dict[str, str] = {}
    skipped_studies: dict[str, str] = Field(
        default_factory=dict, description="Studies the worker skips, and why"
    )


class Health(BaseModel):
    status: Literal["ok"]
    storage: str
