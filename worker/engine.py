"""The training loop of one trial, in the style of torchvision's references.

``fine_tune`` builds the model and batches of a :class:`~worker.trial.TrialJob`
(``_prepare``), trains it epoch by epoch (``run_epoch``: ``train_one_epoch``, then
``evaluate``), reports after each epoch (the callback answers whether the trial is
pruned), hands out checkpoints and resumes from one. Epochs are 0-based. On the
CPU the arithmetic is plain fp32 and deterministic: a trial run twice, or stopped
after epoch k and resumed, gives the same losses bit for bit. On CUDA the same
code runs with bf16 autocast, channels_last, cudnn.benchmark and, if asked,
torch.compile.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from worker.checkpoints import (
    TrainingState,
    cpu_state_dict,
    load_training_state,
    save_training_state,
    state_dict_bytes,
    weights_bytes,
)
from worker.data import DataCache, ImageBatches
from worker.features import FeatureBatches, FeatureCache, cached_features
from worker.models import (
    Network,
    TemplateCache,
    WeightsCache,
    build_network,
    normalization,
    seed_process_rng,
)
from worker.schedule import make_optimizer, make_scheduler, parameter_groups
from worker.trial import Objective, Training, TrialJob, Verdict

logger = logging.getLogger(__name__)

#: On CUDA the loss is checked for NaN/inf every this many iterations (a sync each).
CUDA_CHECK_EVERY = 50
#: With a progress bar, its loss is refreshed every this many iterations.
PROGRESS_EVERY = 20


class Interrupted(Exception):
    """``should_stop()`` turned true: the trial stopped early and should be handed back."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"interrupted during epoch {epoch}")
        self.epoch = epoch


class NonFiniteLoss(FloatingPointError):
    """A training or validation loss became NaN or infinite."""


@dataclass
class Caches:
    """What a worker process keeps between trials. ``features=None`` disables the
    feature cache (frozen backbones then run the whole model every step), ``templates=None``
    the pretrained models copied per trial (each trial then builds and loads its own)."""

    data: DataCache = field(default_factory=DataCache)
    weights: WeightsCache = field(default_factory=WeightsCache)
    features: FeatureCache | None = field(default_factory=FeatureCache)
    templates: TemplateCache | None = field(default_factory=TemplateCache)


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float  # the learning rate of the epoch's last step
    images_per_s: float  # training throughput
    seconds: float  # the whole epoch, validation included


@dataclass(frozen=True)
class TrialOutcome:
    status: Literal["completed", "pruned", "paused"]
    val_loss: float
    val_accuracy: float
    epochs_run: int  # epochs trained by this call (not counting resumed ones)
    model: nn.Module = field(repr=False)
    epoch: int | None = None  # the epoch val_loss and val_accuracy (and the weights) are of
    kept: dict[str, Tensor] | None = field(default=None, repr=False)  # objective.epoch best

    def weights_bytes(self) -> bytes:
        """The kept state dict as torch.save bytes: the best epoch's under objective.epoch
        best, else the final one."""
        return state_dict_bytes(self.kept) if self.kept is not None else weights_bytes(self.model)


class BatchSource(Protocol):
    """Training and validation batches on the training device."""

    def iters_per_epoch(self) -> int: ...

    def train_batches(self, epoch: int) -> Iterable[tuple[Tensor, Tensor]]: ...

    def val_batches(self) -> Iterable[tuple[Tensor, Tensor]]: ...


@dataclass(frozen=True)
class Runtime:
    """How steps run on this device."""

    device: torch.device
    should_stop: Callable[[], bool] = lambda: False
    progress: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def train_one_epoch(
    model: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    epoch: int,
    iters: int,
    rt: Runtime,
    label_smoothing: float = 0.0,
) -> tuple[float, float, int]:
    """One pass over ``batches``; returns (mean loss, lr of the last step, images seen). The
    lr is the first parameter group's: the backbone's, or the head's when only it trains.

    The caller sets train mode. Raises :class:`Interrupted` and :class:`NonFiniteLoss`.
    """
    check_every = CUDA_CHECK_EVERY if rt.cuda else 1
    loss_sum = torch.zeros((), device=rt.device)
    bar = tqdm(total=iters, desc=f"epoch {epoch}", leave=False) if rt.progress else None
    began = time.perf_counter()
    images, lr, step = 0, 0.0, 0
    for step, (x, y) in enumerate(batches):
        if rt.should_stop():
            raise Interrupted(epoch)
        lr = optimizer.param_groups[0]["lr"]
        with rt.autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
        images += len(y)
        if (step + 1) % check_every == 0 and not torch.isfinite(loss_sum):
            _raise_non_finite("training", epoch, step, rt)
        if bar is not None:
            bar.update()
            if step % PROGRESS_EVERY == 0:
                rate = images / max(time.perf_counter() - began, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
    if bar is not None:
        bar.close()
    mean_loss = loss_sum.item() / (step + 1)
    if not math.isfinite(mean_loss):
        _raise_non_finite("training", epoch, step, rt)
    return mean_loss, lr, images


def _raise_non_finite(which: str, epoch: int, step: int, rt: Runtime) -> None:
    where = f"at or before iteration {step}" if rt.cuda else f"at iteration {step}"
    raise NonFiniteLoss(
        f"{which} loss is NaN or infinite in epoch {epoch}, {where} "
        "(the learning rate is probably too high)"
    )


def evaluate(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, epoch: int, rt: Runtime
) -> tuple[float, float]:
    """(mean loss, accuracy) over every validation batch. The loss is plain cross-entropy,
    without the training loss's label smoothing, so trials with different smoothing compare."""
    model.eval()
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    count = 0
    with torch.inference_mode(), rt.autocast():
        for x, y in batches:
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            count += len(y)
    val_loss = loss_sum.item() / count
    if not math.isfinite(val_loss):
        raise NonFiniteLoss(f"validation loss is NaN or infinite after epoch {epoch}")
    return val_loss, correct.item() / count


@dataclass
class _Prepared:
    """What ``fine_tune`` trains: the network, its batches and the step function."""

    network: Network
    source: BatchSource
    forward: Callable[[Tensor], Tensor]  # the training forward (maybe compiled)
    evaluated: nn.Module  # what runs under evaluate(): the model, or its head on features
    state: TrainingState


def _runtime(device: str, should_stop: Callable[[], bool], progress: bool) -> Runtime:
    """How steps run on ``device``; on CUDA, that device made current and cuDNN autotuned."""
    rt = Runtime(torch.device(device), should_stop, progress)
    if rt.cuda:
        if rt.device.index is not None:
            torch.cuda.set_device(rt.device)
        torch.backends.cudnn.benchmark = True
    return rt


def network_for(job: TrialJob, caches: Caches, num_classes: int) -> Network:
    """The job's pretrained network with a fresh head (on the CPU), from this process's caches."""
    return build_network(
        job.model,
        num_classes=num_classes,
        image_size=job.data.image_size,
        seed=job.seed,
        cache=caches.weights,
        templates=caches.templates,
    )


def _prepare(job: TrialJob, caches: Caches, rt: Runtime) -> _Prepared:
    """The job's network on the device, its batches, its optimizer and scheduler."""
    data = caches.data.get(job.data, rt.device)
    network = network_for(job, caches, data.num_classes)
    module = network.module.to(rt.device)
    if rt.cuda:
        module = module.to(memory_format=torch.channels_last)
    mean, std = normalization(job.model)
    images = ImageBatches(
        data,
        batch_size=job.hparams.batch_size,
        augment="none" if job.model.freeze_backbone else job.data.augment,
        seed=job.seed,
        device=rt.device,
        mean=mean,
        std=std,
        channels_last=rt.cuda,
    )
    source, forward, evaluated = _what_trains(job, network, module, images, caches, rt)
    groups = parameter_groups(network, job.hparams, job.training.norm_weight_decay)
    optimizer = make_optimizer(groups, job.hparams, fused=rt.cuda)
    scheduler = make_scheduler(optimizer, job.hparams, source.iters_per_epoch())
    state = TrainingState(module, optimizer, scheduler)
    return _Prepared(network, source, forward, evaluated, state)


def _what_trains(
    job: TrialJob,
    network: Network,
    module: nn.Module,
    images: ImageBatches,
    caches: Caches,
    rt: Runtime,
) -> tuple[BatchSource, Callable[[Tensor], Tensor], nn.Module]:
    """(batches, training forward, evaluated module): a frozen backbone's head on its cached
    features, or the whole model on images (compiled if the spec asks, on CUDA)."""
    if job.model.freeze_backbone and caches.features is not None:
        features = cached_features(
            caches.features, job.model, job.data, network, images, job.seed, rt.autocast
        )
        batches = FeatureBatches(features, batch_size=job.hparams.batch_size, seed=job.seed)
        return batches, network.head, network.head
    if rt.cuda and job.training.compile:
        return images, torch.compile(module), module
    return images, module, module


def _first_epoch(prepared: _Prepared, resume: bytes | None, rt: Runtime) -> int:
    """0, or the epoch after the one checkpoint ``resume`` ends with, its state loaded."""
    if resume is None:
        return 0
    start = load_training_state(resume, prepared.state, rt.device) + 1
    logger.info("resuming after epoch %d", start - 1)
    return start


def run_epoch(
    prepared: _Prepared, epoch: int, rt: Runtime, label_smoothing: float = 0.0
) -> EpochReport:
    """Train one epoch, evaluate, and say how it went."""
    began = time.perf_counter()
    prepared.network.train_mode()
    train_loss, lr, seen = train_one_epoch(
        prepared.forward,
        prepared.state.optimizer,
        prepared.state.scheduler,
        prepared.source.train_batches(epoch),
        epoch=epoch,
        iters=prepared.source.iters_per_epoch(),
        rt=rt,
        label_smoothing=label_smoothing,
    )
    trained = time.perf_counter()
    val_loss, val_accuracy = evaluate(
        prepared.evaluated, prepared.source.val_batches(), epoch=epoch, rt=rt
    )
    report = EpochReport(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        lr=lr,
        images_per_s=seen / max(trained - began, 1e-9),
        seconds=time.perf_counter() - began,
    )
    logger.info(
        "epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f lr %.3g %.0f img/s %.1fs",
        epoch, train_loss, val_loss, val_accuracy, lr, report.images_per_s, report.seconds,
    )  # fmt: skip
    return report


def _checkpoint_due(training: Training, epoch: int) -> bool:
    every = training.checkpoint_every
    return every > 0 and (epoch + 1) % every == 0


def fine_tune(
    job: TrialJob,
    caches: Caches,
    on_epoch: Callable[[EpochReport], bool | Verdict],
    *,
    device: str = "cpu",
    on_checkpoint: Callable[[int, bytes], None] | None = None,
    resume: bytes | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = False,
) -> TrialOutcome:
    """Train ``job`` on ``device`` and return how it ended.

    ``on_epoch`` gets an :class:`EpochReport` after every epoch and returns True or
    "prune" to prune (training stops at once, status "pruned"), "pause" to pause (the state
    goes to ``on_checkpoint`` first, status "paused"), False or "continue" to go on.
    ``on_checkpoint(epoch, bytes)`` gets the training state after every
    ``training.checkpoint_every``-th epoch; ``resume`` takes such bytes and continues with
    the next epoch: a paused trial resumed so trains exactly as if it had not paused. Raises
    :class:`Interrupted` when ``should_stop()`` (polled every iteration) turns true,
    :class:`NonFiniteLoss` on a NaN/inf loss, and
    :class:`~worker.models.WeightsUnavailable` when pretrained weights are missing.
    """
    rt = _runtime(device, should_stop, progress)
    seed_process_rng(job.seed)
    prepared = _prepare(job, caches, rt)
    start, epochs = _first_epoch(prepared, resume, rt), job.training.epochs
    val_loss, val_accuracy = math.nan, math.nan
    if start >= epochs:  # nothing left to train: report where the checkpoint ended
        val_loss, val_accuracy = evaluate(
            prepared.evaluated, prepared.source.val_batches(), epoch=start - 1, rt=rt
        )
    for epoch in range(start, epochs):
        report = run_epoch(prepared, epoch, rt, job.hparams.label_smoothing)
        val_loss, val_accuracy = report.val_loss, report.val_accuracy
        if job.objective.epoch == "best":
            _keep_if_best(prepared.state, job.objective, report)
        verdict = on_epoch(report)
        if verdict in (True, "prune", "pause"):
            status = "paused" if verdict == "pause" else "pruned"
            if status == "paused":
                if on_checkpoint is None:
                    raise ValueError("a trial can pause only with somewhere to put its checkpoint")
                on_checkpoint(epoch, save_training_state(prepared.state, epoch, rt.device))
            logger.info("%s after epoch %d", status, epoch)
            return TrialOutcome(
                status, val_loss, val_accuracy, epoch + 1 - start, prepared.state.model, epoch
            )
        if on_checkpoint is not None and _checkpoint_due(job.training, epoch):
            on_checkpoint(epoch, save_training_state(prepared.state, epoch, rt.device))
    ran = max(0, epochs - start)
    best = prepared.state.best
    if job.objective.epoch == "best" and best is not None:
        logger.info("kept epoch %d, the best by %s", best["epoch"], job.objective.metric)
        return TrialOutcome(
            "completed", best["val_loss"], best["val_accuracy"], ran, prepared.state.model,
            best["epoch"], best["weights"],
        )  # fmt: skip
    return TrialOutcome(
        "completed", val_loss, val_accuracy, ran, prepared.state.model, max(start, epochs) - 1
    )


def evaluate_on_test(
    job: TrialJob, caches: Caches, outcome: TrialOutcome, device: str = "cpu"
) -> tuple[float, float] | None:
    """(loss, accuracy) of the outcome's kept weights (the ones uploaded) on the data set's
    ``test`` folder, evaluated as validation is; None when it has none. Never used for
    selection: the server only shows it in ``best``."""
    test = caches.data.get_test(job.data)
    if test is None or len(test) == 0:
        return None
    rt = Runtime(torch.device(device))
    model = outcome.model
    if outcome.kept is not None:  # objective.epoch best: the best epoch's weights, not the last
        model.load_state_dict(outcome.kept)
    mean, std = normalization(job.model)
    images = ImageBatches(
        caches.data.get(job.data, rt.device),
        batch_size=job.hparams.batch_size,
        augment="none",
        seed=job.seed,
        device=rt.device,
        mean=mean,
        std=std,
        channels_last=rt.cuda,
    )
    batches = images.ordered_batches(test, 2 * job.hparams.batch_size)
    return evaluate(model, batches, epoch=outcome.epoch or 0, rt=rt)


def _keep_if_best(state: TrainingState, objective: Objective, report: EpochReport) -> None:
    """Remember the epoch (its metrics and a CPU copy of its weights) if it is the best yet."""
    best = state.best
    if best is not None and not objective.better(
        report.val_loss, report.val_accuracy, (best["val_loss"], best["val_accuracy"])
    ):
        return
    state.best = {
        "epoch": report.epoch,
        "val_loss": report.val_loss,
        "val_accuracy": report.val_accuracy,
        "weights": cpu_state_dict(state.model),
    }
