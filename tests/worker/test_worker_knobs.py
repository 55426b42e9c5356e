"""The fine-tuning knobs, each by its effect: the head's learning rate through warmup and
StepLR (head_lr_mult), the training loss (label_smoothing), the parameter groups (norm weight
decay) and the augmentation policies."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.worker.test_worker_data import MEAN, STD, digits_spec
from tests.worker.test_worker_schedule import hparams
from worker.augment import POLICIES, policy_name
from worker.data import DataCache, ImageBatches
from worker.engine import Runtime, train_one_epoch
from worker.models import Network
from worker.schedule import analytic_lr, make_optimizer, make_scheduler, parameter_groups

ITERS = 3


def small_network(frozen: bool = False) -> Network:
    """conv -> batch norm -> linear head (module "3"), as build_network leaves a model."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    if frozen:
        for name, param in module.named_parameters():
            param.requires_grad_(name.startswith("3."))
    return Network(module, "3", frozen)


def _names(network: Network, groups: list[dict]) -> dict[str, set[str]]:
    by_id = {id(p): n for n, p in network.module.named_parameters()}
    return {g["name"]: {by_id[id(p)] for p in g["params"]} for g in groups}


# --- head_lr_mult ------------------------------------------------------------------------------


@pytest.mark.parametrize("mult", [1.0, 10.0, 0.5])
def test_the_head_trains_at_lr_times_head_lr_mult_through_warmup_and_steplr(mult: float) -> None:
    hp = hparams(lr=0.1, warmup_epochs=2, step_size=1, gamma=0.5, head_lr_mult=mult)
    network = small_network()
    optimizer = make_optimizer(parameter_groups(network, hp, 0.0), hp)
    scheduler = make_scheduler(optimizer, hp, ITERS)
    heads = [g for g in optimizer.param_groups if g["name"].startswith("head")]
    bodies = [g for g in optimizer.param_groups if g["name"].startswith("backbone")]
    assert heads and bodies
    trace = []
    for step in range(6 * ITERS):
        expected = analytic_lr(hp, ITERS, step)
        trace.append(expected)
        for group in bodies:
            assert group["lr"] == pytest.approx(expected, rel=1e-9), (step, group["name"])
        for group in heads:
            assert group["lr"] == pytest.approx(expected * mult, rel=1e-9), (step, group["name"])
        optimizer.step()
        scheduler.step()
    # the trace went through warmup, its peak and two decays
    assert trace[0] == pytest.approx(0.1 * 0.01) and max(trace) == pytest.approx(0.1)
    assert trace[-1] == pytest.approx(0.1 * 0.5**3)


def test_a_frozen_backbone_has_only_head_groups_at_the_heads_lr() -> None:
    hp = hparams(lr=0.1, head_lr_mult=3.0, weight_decay=1e-3)
    network = small_network(frozen=True)
    groups = parameter_groups(network, hp, 0.0)
    assert _names(network, groups) == {"head": {"3.weight"}, "head.no_decay": {"3.bias"}}
    assert [g["lr"] for g in groups] == pytest.approx([0.3, 0.3])


# --- norm weight decay -------------------------------------------------------------------------


def test_norm_and_bias_parameters_go_in_a_group_without_weight_decay() -> None:
    hp = hparams(weight_decay=1e-3)
    network = small_network()
    groups = parameter_groups(network, hp, 0.0)
    assert _names(network, groups) == {
        "backbone": {"0.weight"},
        "backbone.no_decay": {"0.bias", "1.weight", "1.bias"},
        "head": {"3.weight"},
        "head.no_decay": {"3.bias"},
    }
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"backbone": 1e-3, "backbone.no_decay": 0.0, "head": 1e-3,
                     "head.no_decay": 0.0}  # fmt: skip
    # null: every parameter decays alike (the old behaviour)
    same = parameter_groups(network, hp, None)
    assert {g["name"]: g["weight_decay"] for g in same} == {"backbone": 1e-3, "head": 1e-3}
    assert sum(len(g["params"]) for g in same) == len(list(network.module.parameters()))


def test_every_batch_norm_parameter_of_a_torchvision_model_is_undecayed() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    network = Network(model, "fc", False)
    groups = parameter_groups(network, hparams(weight_decay=1e-4), 0.0)
    names = _names(network, groups)
    norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)
             for p in ("weight", "bias")}  # fmt: skip
    assert norms and norms <= names["backbone.no_decay"]
    assert not any(n.endswith("bias") for n in names["backbone"] | names["head"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(("weight_decay", "changes"), [(1e-2, True), (0.0, False)])
def test_norm_weight_decay_changes_a_step_only_when_weight_decay_is_set(
    weight_decay: float, changes: bool
) -> None:
    """Today's results change with weight_decay > 0 (norm weights no longer decay), and stay
    the same with the default recipe's weight_decay 0."""
    hp = hparams(weight_decay=weight_decay, lr=0.5, momentum=0.0, warmup_epochs=0)
    after = {}
    for norm_weight_decay in (None, 0.0):
        network = small_network()
        optimizer = make_optimizer(parameter_groups(network, hp, norm_weight_decay), hp)
        network.module(torch.ones(2, 3, 4, 4)).sum().backward()
        optimizer.step()
        after[norm_weight_decay] = network.module[1].weight.detach().clone()
    assert (not torch.equal(after[None], after[0.0])) is changes


# --- label smoothing ---------------------------------------------------------------------------


def _one_batch_loss(label_smoothing: float) -> float:
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    loss, _, _ = train_one_epoch(model, optimizer, scheduler, [(x, y)], epoch=0, iters=1,
                                 rt=Runtime(torch.device("cpu")),
                                 label_smoothing=label_smoothing)  # fmt: skip
    return loss


def test_label_smoothing_is_the_training_loss_torch_defines() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    log_p = F.log_softmax(model(x), dim=1).detach()
    eps = 0.2
    # (1 - eps) * cross-entropy + eps * the mean over classes of -log p
    by_formula = ((1 - eps) * -log_p[torch.arange(8), y] - eps * log_p.mean(dim=1)).mean()
    assert _one_batch_loss(eps) == pytest.approx(by_formula.item(), rel=1e-6)
    assert _one_batch_loss(0.0) == pytest.approx(F.nll_loss(log_p, y).item(), rel=1e-6)
    assert _one_batch_loss(eps) != pytest.approx(_one_batch_loss(0.0))


# --- augmentation policies ---------------------------------------------------------------------


def _batches(policy: str | bool, seed: int = 0) -> ImageBatches:
    data = DataCache().get(digits_spec(classes=[0, 1], image_size=32))
    return ImageBatches(data, batch_size=16, augment=policy, seed=seed,
                        device=torch.device("cpu"), mean=MEAN, std=STD)  # fmt: skip


def test_the_old_booleans_are_flip_crop_and_none() -> None:
    assert (policy_name(True), policy_name(False)) == ("flip_crop", "none")
    with pytest.raises(ValueError, match="unknown augment policy 'mixup'"):
        policy_name("mixup")
    spec = digits_spec(augment=True)
    assert spec.augment == "flip_crop"
    assert dataclasses.replace(spec, augment="none").decode_key() == spec.decode_key()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_builds_and_transforms_a_batch_reproducibly(policy: str) -> None:
    first = next(iter(_batches(policy).train_batches(0)))
    x, y = first
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and len(y) == 16
    assert torch.isfinite(x).all()
    rng = torch.get_rng_state()
    again = next(iter(_batches(policy).train_batches(0)))
    assert torch.equal(again[0], x)  # the same seed and epoch: the same augmented batch
    assert torch.equal(torch.get_rng_state(), rng)  # the process's RNG is left alone
    plain = next(iter(_batches("none").train_batches(0)))
    assert torch.equal(plain[1], y)  # the same images in the same order
    flip_crop = next(iter(_batches("flip_crop").train_batches(0)))
    if policy == "none":
        assert torch.equal(x, plain[0])
    elif policy == "flip_crop":
        assert not torch.equal(x, plain[0])
    else:  # a policy on top of the same crops
        assert not torch.equal(x, flip_crop[0])
    # validation never augments
    assert torch.equal(
        next(iter(_batches(policy).val_batches()))[0], next(iter(_batches("none").val_batches()))[0]
    )
