from __future__ import annotations

import io
import logging
from dataclasses import astuple, dataclass, field
from pathlib import Path

import pytest
import torch
import torchvision

import worker.features
from tests.worker.jobs import BASE_JOB, model_spec
from worker.data import DataCache
from worker.engine import (
    Caches,
    EpochReport,
    Interrupted,
    NonFiniteLoss,
    TrialOutcome,
    fine_tune,
)
from worker.features import FeatureCache
from worker.models import WeightsCache, build_network
from worker.schedule import analytic_lr

ARCH = BASE_JOB["model"]["arch"]
HEAD = "classifier.3"


@dataclass
class Recorder:
    """An on_epoch/on_checkpoint pair that records what it gets."""

    prune_at: int | None = None
    reports: list[EpochReport] = field(default_factory=list)
    checkpoints: dict[int, bytes] = field(default_factory=dict)

    def on_epoch(self, report: EpochReport) -> bool:
        self.reports.append(report)
        return report.epoch == self.prune_at

    def on_checkpoint(self, epoch: int, data: bytes) -> None:
        self.checkpoints[epoch] = data

    def metrics(self) -> list[tuple[float, ...]]:
        """Everything deterministic in the reports (not the timings)."""
        return [astuple(r)[:5] for r in self.reports]


def run(
    job, caches: Caches, recorder: Recorder | None = None, **kw
) -> tuple[TrialOutcome, Recorder]:
    recorder = recorder or Recorder()
    outcome = fine_tune(job, caches, recorder.on_epoch, on_checkpoint=recorder.on_checkpoint, **kw)
    return outcome, recorder


def state_of(outcome: TrialOutcome) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(outcome.weights_bytes()), weights_only=True)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_same_seed_is_identical_and_resume_matches_uninterrupted(make_job, caches, caplog) -> None:
    job = make_job(training={"epochs": 3})
    with caplog.at_level(logging.INFO, logger="worker.engine"):
        first, rec1 = run(job, caches)
    assert "epoch 2: train_loss" in caplog.text
    second, rec2 = run(job, Caches(data=DataCache(), weights=WeightsCache()))
    assert first.status == "completed" and first.epochs_run == 3
    assert [r.epoch for r in rec1.reports] == [0, 1, 2]
    assert rec1.metrics() == rec2.metrics()
    assert_same_state(state_of(first), state_of(second))
    assert sorted(rec1.checkpoints) == [0, 1, 2]
    assert rec1.reports[-1].train_loss < rec1.reports[0].train_loss  # it really trains

    # the lr reported is the scheduled lr of the epoch's last step
    iters = len(caches.data.get(job.data).train) // 32
    for r in rec1.reports:
        assert r.lr == pytest.approx(analytic_lr(job.hparams, iters, (r.epoch + 1) * iters - 1))

    resumed, rec3 = run(job, caches, resume=rec1.checkpoints[0])
    assert resumed.epochs_run == 2
    assert rec3.metrics() == rec1.metrics()[1:]
    assert (resumed.val_loss, resumed.val_accuracy) == (first.val_loss, first.val_accuracy)
    assert_same_state(state_of(resumed), state_of(first))

    done, rec4 = run(job, caches, resume=rec1.checkpoints[2])
    assert (done.status, done.epochs_run, rec4.reports) == ("completed", 0, [])
    assert done.val_loss == first.val_loss


def test_huge_lr_raises_non_finite_loss(make_job, caches) -> None:
    job = make_job(hparams={"lr": 1e6, "warmup_epochs": 0}, training={"epochs": 3})
    recorder = Recorder()
    with pytest.raises(NonFiniteLoss, match=r"training loss .* epoch 0, at iteration \d"):
        run(job, caches, recorder)
    assert recorder.reports == []


def test_pruned_trial_stops_at_once(make_job, caches) -> None:
    job = make_job(model={"freeze_backbone": True}, training={"epochs": 4, "checkpoint_every": 1})
    outcome, recorder = run(job, caches, Recorder(prune_at=1))
    assert (outcome.status, outcome.epochs_run) == ("pruned", 2)
    assert [r.epoch for r in recorder.reports] == [0, 1]
    assert sorted(recorder.checkpoints) == [0]  # none for the pruned epoch
    assert outcome.val_loss == recorder.reports[-1].val_loss


def test_checkpoint_every(make_job, caches) -> None:
    job = make_job(model={"freeze_backbone": True}, training={"epochs": 3, "checkpoint_every": 2})
    _, recorder = run(job, caches)
    assert sorted(recorder.checkpoints) == [1]
    job = make_job(model={"freeze_backbone": True}, training={"epochs": 2, "checkpoint_every": 0})
    _, recorder = run(job, caches)
    assert recorder.checkpoints == {}


def test_should_stop_interrupts(make_job, caches) -> None:
    polls = iter(range(100))

    def stop_on_third_poll() -> bool:
        return next(polls) >= 2

    recorder = Recorder()
    with pytest.raises(Interrupted) as err:
        run(make_job(), caches, recorder, should_stop=stop_on_third_poll)
    assert err.value.epoch == 0
    assert recorder.reports == []


@pytest.fixture
def pretrained_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resnet18 state dict with distinctive batch-norm statistics."""
    torch.manual_seed(3)
    model = torchvision.models.get_model(ARCH, num_classes=10)
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.uniform_(0.5, 1.5)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "pretrained.pt"
    torch.save(saved, path)
    return path, saved


@pytest.mark.slow
def test_frozen_backbone_is_bit_identical_and_feature_cache_matches(
    make_job, caches, pretrained_file, monkeypatch, capsys
) -> None:
    path, saved = pretrained_file
    model, hparams = {"weights_path": str(path), "freeze_backbone": True}, {"lr": 0.2}
    job = make_job(model=model, hparams=hparams, training={"epochs": 3})
    initial_head = build_network(
        job.model, num_classes=2, image_size=16, seed=job.seed,
        cache=WeightsCache(),
    ).head  # fmt: skip
    uncached, rec_plain = run(job, Caches(data=caches.data, features=None))
    cached, rec_cached = run(job, caches)
    for outcome in (uncached, cached):
        state = state_of(outcome)
        for key, value in saved.items():
            if not key.startswith(HEAD + "."):
                assert torch.equal(state[key], value), key  # parameters and buffers
        assert not torch.allclose(state[HEAD + ".weight"], initial_head.weight)
    # the head trained on cached features is the head trained through the backbone
    plain_losses = [x for r in rec_plain.reports for x in (r.train_loss, r.val_loss)]
    cached_losses = [x for r in rec_cached.reports for x in (r.train_loss, r.val_loss)]
    assert cached_losses == pytest.approx(plain_losses, abs=1e-5)
    for key in (HEAD + ".weight", HEAD + ".bias"):
        torch.testing.assert_close(
            state_of(cached)[key], state_of(uncached)[key], atol=1e-5, rtol=0
        )

    # the next trial of the study reuses the features (and shows a progress bar)
    assert len(caches.features) == 1
    monkeypatch.setattr(worker.features, "extract_features", lambda *a: pytest.fail("recomputed"))
    other, _ = run(make_job(seed=5, model=model, hparams=hparams, training={"epochs": 1}),
                   caches, progress=True)  # fmt: skip
    assert other.status == "completed"
    assert "epoch 0" in capsys.readouterr().err


def test_weights_fine_tune_into_a_fresh_model(make_job, caches) -> None:
    outcome, _ = run(make_job(model={"freeze_backbone": True}, training={"epochs": 1}), caches)
    model = torchvision.models.get_model(ARCH, num_classes=2)
    model.load_state_dict(state_of(outcome))
    assert torch.equal(model.classifier[3].weight, outcome.model.classifier[3].weight)


def test_feature_cache_is_per_backbone(make_job) -> None:
    key = worker.features.feature_key
    data = make_job().data
    cpu = torch.device("cpu")
    random = model_spec(ARCH, freeze_backbone=True)
    named = model_spec(ARCH, weights="DEFAULT", freeze_backbone=True)
    assert key(random, data, cpu, 1) != key(random, data, cpu, 2)  # seed-initialised backbone
    assert key(named, data, cpu, 1) == key(named, data, cpu, 2)
    assert isinstance(FeatureCache(), FeatureCache)


@pytest.mark.slow
def test_trials_from_the_template_cache_train_bit_for_bit_as_without(
    make_job, caches, pretrained_file
) -> None:
    path, _ = pretrained_file
    model = {"weights_path": str(path)}
    job = make_job(model=model, training={"epochs": 2})
    uncached, rec_plain = run(job, Caches(data=caches.data, templates=None))
    run(make_job(seed=9, model=model, training={"epochs": 1}), caches)  # builds the template
    assert caches.templates is not None and len(caches.templates) == 1
    cached, rec_cached = run(job, caches)  # a copy of it, with dropout (mobilenet's classifier)
    assert rec_cached.metrics() == rec_plain.metrics()
    assert_same_state(state_of(cached), state_of(uncached))
    assert len(caches.templates) == 1


def _checkpoint_model(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), weights_only=True)["model"]


@pytest.mark.parametrize("metric", ["val_loss", "val_accuracy"])
def test_epoch_best_keeps_the_best_epochs_values_and_weights(make_job, caches, metric) -> None:
    """At lr 2 the tiny frozen-backbone trial wanders: its best epoch is not its last. The
    outcome is that epoch's (ties keep the earlier), its weights are those the checkpoint of
    that epoch holds, and a run resumed after it keeps the same."""
    job = make_job(
        model={"freeze_backbone": True},
        training={"epochs": 5, "checkpoint_every": 1},
        objective={"metric": metric, "epoch": "best"},
        hparams={"lr": 2.0, "warmup_epochs": 0, "step_size": 10},
    )
    outcome, rec = run(job, caches)
    if metric == "val_loss":
        best = min(rec.reports, key=lambda r: (r.val_loss, r.epoch))
    else:
        best = max(rec.reports, key=lambda r: (r.val_accuracy, -r.epoch))
    assert best.epoch != 4  # else this test shows nothing
    assert (outcome.status, outcome.epoch) == ("completed", best.epoch)
    assert (outcome.val_loss, outcome.val_accuracy) == (best.val_loss, best.val_accuracy)
    assert_same_state(state_of(outcome), _checkpoint_model(rec.checkpoints[best.epoch]))
    final = weights_bytes_of(outcome.model)
    assert any(not torch.equal(final[k], v) for k, v in state_of(outcome).items())

    resumed, _ = run(job, caches, resume=rec.checkpoints[max(best.epoch, 3)])
    assert (resumed.epoch, resumed.val_loss) == (best.epoch, best.val_loss)
    assert_same_state(state_of(resumed), state_of(outcome))

    last = make_job(
        model={"freeze_backbone": True}, training={"epochs": 5, "checkpoint_every": 1},
        hparams={"lr": 2.0, "warmup_epochs": 0, "step_size": 10},
    )  # fmt: skip
    plain, rec = run(last, caches)
    assert (plain.epoch, plain.val_loss) == (4, rec.reports[-1].val_loss)
    assert_same_state(state_of(plain), _checkpoint_model(rec.checkpoints[4]))


def weights_bytes_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def test_the_trial_trains_with_its_label_smoothing_and_head_lr(make_job, caches) -> None:
    """The knobs reach the training loop: smoothing raises the training loss (validation loss
    stays plain cross-entropy), and a frozen backbone's reported lr is the head's."""
    base = {"model": {"freeze_backbone": True}, "training": {"epochs": 1}}
    _, rec = run(make_job(**base), caches)
    _, rec_s = run(make_job(**base, hparams={"label_smoothing": 0.3}), caches)
    assert rec_s.reports[0].train_loss > rec.reports[0].train_loss
    _, rec_h = run(make_job(**base, hparams={"head_lr_mult": 4.0}), caches)
    assert rec_h.reports[0].lr == pytest.approx(4.0 * rec.reports[0].lr)
    assert rec_h.reports[0].val_loss != rec.reports[0].val_loss


@pytest.mark.slow
def test_a_paused_trial_resumed_trains_as_if_it_never_paused(make_job, caches) -> None:
    """asha's pause: the state goes out at the paused epoch (checkpoints or not), and training
    resumed from it ends with the same losses and weights, bit for bit, as an uninterrupted run."""
    job = make_job(training={"epochs": 3, "checkpoint_every": 0})
    whole, rec_whole = run(job, caches)
    assert rec_whole.checkpoints == {}  # none due

    pausing = Recorder()
    paused = fine_tune(
        job,
        caches,
        lambda r: pausing.on_epoch(r) or ("pause" if r.epoch == 0 else "continue"),
        on_checkpoint=pausing.on_checkpoint,
    )
    assert (paused.status, paused.epoch, paused.epochs_run) == ("paused", 0, 1)
    assert sorted(pausing.checkpoints) == [0]

    resumed, rec_resumed = run(job, caches, resume=pausing.checkpoints[0])
    assert resumed.status == "completed" and resumed.epochs_run == 2
    assert pausing.metrics() + rec_resumed.metrics() == rec_whole.metrics()
    assert (resumed.val_loss, resumed.val_accuracy) == (whole.val_loss, whole.val_accuracy)
    assert_same_state(state_of(resumed), state_of(whole))

    with pytest.raises(ValueError, match="checkpoint"):
        fine_tune(job, caches, lambda r: "pause")
