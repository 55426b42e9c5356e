from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tests.worker.jobs import model_spec
from worker.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    TemplateCache,
    WeightsCache,
    WeightsUnavailable,
    build_network,
    find_head,
    load_pretrained,
    normalization,
    resolve_weights,
    weights_file,
)


def random_state_dict(arch: str = "resnet18", num_classes: int = 1000, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, num_classes=num_classes)
    # Make the batch-norm buffers distinctive too, so a load is visible in them.
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_backbone_equal(model: nn.Module, saved: dict, head: str) -> None:
    own = model.state_dict()
    backbone = [k for k in saved if not k.startswith(head + ".")]
    assert backbone
    for key in backbone:
        assert torch.equal(own[key], saved[key]), key


def build(
    spec: ModelSpec,
    cache: WeightsCache,
    num_classes: int = 3,
    seed: int = 0,
    templates: TemplateCache | None = None,
):
    return build_network(
        spec, num_classes=num_classes, image_size=32, seed=seed, cache=cache, templates=templates
    )


@pytest.mark.parametrize("wrapped", [False, True])
def test_weights_path_loads_saved_tensors_and_ignores_other_head(
    tmp_path: Path, wrapped: bool
) -> None:
    saved = random_state_dict(num_classes=5)
    path = tmp_path / "pretrained.pt"
    torch.save({"model": saved} if wrapped else saved, path)
    network = build(model_spec("resnet18", weights_path=str(path)), WeightsCache(), num_classes=3)
    assert network.head_name == "fc"
    assert_backbone_equal(network.module, saved, "fc")
    assert network.head.weight.shape == (3, 512)


def test_head_is_initialised_from_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(random_state_dict(), path)
    spec = model_spec("resnet18", weights_path=str(path))
    cache = WeightsCache()
    a, b, c = (build(spec, cache, seed=s).head.weight for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_weights_cache_loads_a_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save(random_state_dict(), path)
    cache = WeightsCache()
    spec = model_spec("resnet18", weights_path=str(path))
    first = cache.state_dict(spec)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded twice"))
    assert cache.state_dict(spec) is first


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "DEFAULT"])
def test_torchvision_weights_name_loads_from_torch_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    assert weights_file(weights) == path
    path.parent.mkdir(parents=True)
    saved = random_state_dict()
    torch.save(saved, path)
    # conftest makes any download attempt fail the build
    network = build(model_spec("resnet18", weights=name), WeightsCache(), num_classes=4)
    assert_backbone_equal(network.module, saved, "fc")
    assert network.head.out_features == 4


def test_missing_weights_name_file_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(WeightsUnavailable) as err:
        build(model_spec("resnet18", weights="IMAGENET1K_V1"), WeightsCache())
    message = str(err.value)
    assert Path(weights.url).name in message
    assert str(folder) in message
    assert weights.url in message
    assert "download failed" in message
    assert not folder.exists() or not any(folder.iterdir())


def test_downloads_can_be_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download tried")
    )
    with pytest.raises(WeightsUnavailable, match="downloads are disabled"):
        WeightsCache(allow_download=False).state_dict(model_spec("resnet18", weights="DEFAULT"))


def test_missing_weights_path_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        WeightsCache().state_dict(model_spec("resnet18", weights_path=str(tmp_path / "no.pt")))
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        resolve_weights("resnet18", "NOPE")


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(random_state_dict("mobilenet_v3_small"), path)
    with pytest.raises(ValueError, match="do not fit"):
        build(model_spec("resnet18", weights_path=str(path)), WeightsCache())


@pytest.mark.parametrize(
    ("arch", "head"),
    [
        ("resnet18", "fc"),
        ("vgg11", "classifier.6"),
        ("efficientnet_b0", "classifier.1"),
        ("mobilenet_v3_small", "classifier.3"),
        ("convnext_tiny", "classifier.2"),
        ("vit_b_16", "heads.head"),
        ("swin_t", "head"),
        ("densenet121", "classifier"),
    ],
)
def test_find_head(arch: str, head: str) -> None:
    with torch.device("meta"):  # no memory, no init cost
        model = torchvision.models.get_model(arch)
    assert find_head(model) == head


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "googlenet"])
def test_replaced_head_gives_class_count_logits(arch: str) -> None:
    network = build(model_spec(arch), WeightsCache(), num_classes=4)
    network.train_mode()
    out = network.module(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor)  # googlenet's auxiliary heads are removed
    assert out.shape == (2, 4)


def test_old_densenet_keys_are_renamed() -> None:
    model = torchvision.models.densenet121()
    saved = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    old_style = {  # as in torchvision's files: 'norm.1', no num_batches_tracked
        k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
        for k, v in saved.items()
        if not k.endswith("num_batches_tracked")
    }
    assert old_style.keys() != saved.keys()
    load_pretrained(model, old_style, "classifier")
    assert_backbone_equal(model, saved, "classifier")


def test_freeze_backbone_marks_only_the_head_trainable() -> None:
    network = build(model_spec("resnet18", freeze_backbone=True), WeightsCache())
    trainable = [n for n, p in network.module.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    network.train_mode()
    assert network.head.training
    assert not network.module.training
    assert not any(m.training for n, m in network.module.named_modules() if n != "fc")


def test_normalization(tmp_path: Path) -> None:
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    preset = weights.transforms()
    assert normalization(model_spec("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1")) == (
        tuple(preset.mean),
        tuple(preset.std),
    )
    assert normalization(model_spec("resnet18")) == (IMAGENET_MEAN, IMAGENET_STD)
    path = str(tmp_path / "w.pt")
    assert normalization(model_spec("resnet18", weights_path=path)) == (IMAGENET_MEAN, IMAGENET_STD)


def assert_same_module(a: nn.Module, b: nn.Module) -> None:
    """Same tensors (values, strides, requires_grad), buffers and train/eval modes."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
        assert pa[key].stride() == pb[key].stride(), key
        assert pa[key].requires_grad == pb[key].requires_grad, key
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys()
    for key in ba:
        assert torch.equal(ba[key], bb[key]), key
    assert [m.training for m in a.modules()] == [m.training for m in b.modules()]


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
@pytest.mark.parametrize(
    ("arch", "freeze"), [("resnet18", False), ("resnet18", True), ("googlenet", False)]
)
def test_build_from_template_equals_a_fresh_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, freeze: bool
) -> None:
    path = tmp_path / "w.pt"
    torch.save(random_state_dict(arch), path)
    spec = model_spec(arch, weights_path=str(path), freeze_backbone=freeze)
    cache, templates = WeightsCache(), TemplateCache()
    build(spec, cache, seed=1, templates=templates)  # the first trial builds the template
    fresh = build(spec, WeightsCache(), seed=7)
    assert len(templates) == 1
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **k: pytest.fail("built"))
    before = torch.random.get_rng_state()
    copied = build(spec, cache, seed=7, templates=templates)
    assert torch.equal(torch.random.get_rng_state(), before)  # dropout streams stay put
    assert copied.head_name == fresh.head_name
    assert_same_module(copied.module, fresh.module)
    x = torch.randn(2, 3, 32, 32)
    copied.module.eval()
    fresh.module.eval()
    assert torch.equal(copied.module(x), fresh.module(x))


def test_changing_a_built_network_leaves_the_template_alone(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(random_state_dict(), path)
    spec = model_spec("resnet18", weights_path=str(path), freeze_backbone=True)
    cache, templates = WeightsCache(), TemplateCache()
    first = build(spec, cache, templates=templates)
    with torch.no_grad():
        for tensor in [*first.module.parameters(), *first.module.buffers()]:
            tensor.add_(1)
    first.module.layer1[0].conv1.weight.requires_grad_(True)
    first.module.eval()
    first.module.layer2 = nn.Identity()
    second = build(spec, cache, templates=templates)
    assert_same_module(second.module, build(spec, WeightsCache()).module)
    assert not {id(p) for p in first.module.parameters()} & {
        id(p) for p in second.module.parameters()
    }


def test_template_key_is_the_weights_and_builder_arguments(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(random_state_dict(), path)
    spec = model_spec("resnet18", weights_path=str(path))
    cache, templates = WeightsCache(), TemplateCache(capacity=4)
    for num_classes, seed in ((3, 0), (5, 1)):  # the head and seed do not matter, nor freezing
        build(spec, cache, num_classes, seed, templates)
    build(dataclasses.replace(spec, freeze_backbone=True), cache, 3, 0, templates)
    assert len(templates) == 1
    torch.save(random_state_dict(seed=2), path)  # a new file at the same place
    os.utime(path, ns=(1, 1))
    network = build(spec, cache, templates=templates)
    assert len(templates) == 2
    assert_backbone_equal(network.module, random_state_dict(seed=2), "fc")
    build(model_spec("mobilenet_v3_small"), cache, templates=templates)  # random init: no template
    assert len(templates) == 2
