"""Every name hpsearch stores in Optuna's attributes, and the patterns of its identifiers.

Attributes are data that outlives a release: a key spelled in one place cannot drift between the
module that writes it and the one that reads it.
"""

from __future__ import annotations

# --- identifiers ------------------------------------------------------------------------------
STUDY_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
WORKER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
# Worker labels (`hpsearch worker --label gpu=h100`) and what a study `requires` of them.
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9._:/+-]{0,128}$"
MAX_LABELS = 32

# --- study user attrs (read by every server process to open the study) ------------------------
SPEC = "spec"  # the validated spec, as JSON
SPACE = "search_space"  # the resolved search space, as JSON
CREATED_AT = "created_at"  # UTC, ISO 8601

# --- study system attrs -----------------------------------------------------------------------
STOPPED = "hpsearch:stopped"
# The study preflight (service/preflight.py): {"state": "pending" | "passed", "trial_id": the
# preflight trial handed out last, or null, "data": what the passed preflight found, or null}.
# Absent on studies created before preflights existed: they count as passed.
PREFLIGHT = "hpsearch:preflight"
# Why the study's spec cannot be trained (a preflight's spec fault), or null: no trial is
# handed out while it is set; `resume` clears it.
ERROR = "hpsearch:error"

# --- trial user attrs (shown in the dashboard) -----------------------------------------------
BASELINE = "baseline"
WORKER = "worker"
DEVICE = "device"
VAL_ACCURACY = "val_accuracy"
VAL_LOSS = "val_loss"  # the latest epoch's, then at completion the objective epoch's
OBJECTIVE_EPOCH = "objective_epoch"  # the epoch whose metrics (and weights) the trial keeps
# The kept weights on the data set's test folder: shown by `best`, never used for selection.
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
TRAIN_LOSS_PREFIX = "train_loss:"  # one attr per epoch: train_loss:<epoch>
FAIL_REASON = "fail_reason"
RETRY_OF = "retry_of"
RESUMED_FROM_EPOCH = "resumed_from_epoch"
# The asha pruner's pauses (service/pausing.py): the epoch a paused trial paused after (null once
# promoted; kept when it ended paused), and how many times it was promoted.
PAUSED_AFTER_EPOCH = "paused_after_epoch"
PROMOTIONS = "promotions"
# Warm start: "<study> trial <number>", the source trial a trial came from.
WARM_START = "warm_start"  # a configuration enqueued from the source's best
PRIOR = "prior"  # prior evidence for the sampler: never counted, ranked or pruned against
# What a retry copies from the trial it retries that describes that trial's own run.
PER_RUN = (
    FAIL_REASON,
    VAL_ACCURACY,
    VAL_LOSS,
    OBJECTIVE_EPOCH,
    RESUMED_FROM_EPOCH,
    DEVICE,
    TEST_LOSS,
    TEST_ACCURACY,
)

# --- trial system attrs -----------------------------------------------------------------------
CHECKPOINT = "hpsearch:checkpoint"  # {"artifact_id", "epoch"}
WEIGHTS = "hpsearch:weights"  # artifact id
# Optuna's own names, read by Optuna and the dashboard.
RETRY_HISTORY = "retry_history"  # Optuna's retry callback: numbers of the trials retried
ARTIFACT_PREFIX = "artifacts:"  # optuna.artifacts.upload_artifact: artifacts:<artifact id>
GRID_ID = "grid_id"  # GridSampler: the combination a trial runs
GRID_SPACE = "search_space"  # GridSampler: the grid it was drawn from


def train_loss_key(epoch: int) -> str:
    return f"{TRAIN_LOSS_PREFIX}{epoch}"


def train_losses(user_attrs: dict[str, object]) -> dict[int, float]:
    """The training loss by epoch, from a trial's user attrs."""
    return dict(
        sorted(
            (int(key.removeprefix(TRAIN_LOSS_PREFIX)), float(value))  # type: ignore[arg-type]
            for key, value in user_attrs.items()
            if key.startswith(TRAIN_LOSS_PREFIX)
        )
    )
