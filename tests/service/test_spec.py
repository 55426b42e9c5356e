"""The study spec: every validation rule answers 422 naming the field and the reason, and
creates nothing; a good spec creates an Optuna study holding the spec and the baseline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from service.search_space import (
    HYPERPARAMETERS,
    SearchSpace,
    grid_values,
    load_named_space,
    to_distributions,
)
from service.settings import DEFAULT_SEARCH_SPACES
from service.spec import fit_warmup
from tests.scripted import API, ScriptedWorker, unique
from tests.servers import Server, digits_spec

LR = {"type": "float", "low": 1e-4, "high": 0.1, "log": True}

# (case id, spec overrides, field the error names, words its reason holds)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("name-pattern", {"name": "has space"}, "name", "pattern"),
    ("name-too-long", {"name": "n" * 129}, "name", "pattern"),
    (
        "low-not-below-high",
        {"search_space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}},
        "search_space.lr",
        "less than high",
    ),
    (
        "low-equals-high",
        {"search_space": {"step_size": {"type": "int", "low": 3, "high": 3}}},
        "search_space.step_size",
        "less than high",
    ),
    (
        "log-needs-positive-low",
        {"search_space": {"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
        "search_space.lr",
        "log scale needs low > 0",
    ),
    (
        "unknown-param-type",
        {"search_space": {"lr": {"type": "gaussian", "low": 0, "high": 1}}},
        "search_space.lr.type",
        "gaussian",
    ),
    (
        "unknown-param-field",
        {"search_space": {"lr": {**LR, "scale": 2}}},
        "search_space.lr.scale",
        "Extra inputs",
    ),
    (
        "unknown-hyperparameter",
        {"search_space": {"lr": LR, "dropout": LR}},
        "search_space.dropout",
        "unknown hyperparameter",
    ),
    (
        "float-for-int-hyperparameter",
        {"search_space": {"step_size": {"type": "float", "low": 1, "high": 5}}},
        "search_space.step_size",
        "integer",
    ),
    ("empty-space", {"search_space": {}}, "search_space", "empty"),
    (
        "unknown-named-space",
        {"search_space": "no_such_space"},
        "search_space",
        "no search space named",
    ),
    ("named-space-path", {"search_space": "../etc/passwd"}, "search_space", "pattern"),
    ("unknown-sampler", {"sampler": {"name": "bayes"}}, "sampler.name", "bayes"),
    (
        "unknown-sampler-option",
        {"sampler": {"name": "tpe", "n_trees": 3}},
        "sampler.n_trees",
        "Extra inputs",
    ),
    (
        "bad-sampler-option",
        {"sampler": {"name": "random", "seed": -1}},
        "sampler.seed",
        "greater than or equal to 0",
    ),
    (
        "grid-on-continuous",
        {"sampler": {"name": "grid"}},
        "search_space",
        "grid sampler needs a step",
    ),
    ("unknown-pruner", {"pruner": {"name": "early"}}, "pruner.name", "early"),
    (
        "unknown-pruner-option",
        {"pruner": {"name": "median", "patience": 2}},
        "pruner.patience",
        "Extra inputs",
    ),
    (
        "missing-pruner-option",
        {"pruner": {"name": "percentile"}},
        "pruner.percentile",
        "Field required",
    ),
    (
        "bad-pruner-option",
        {"pruner": {"name": "hyperband", "reduction_factor": 1}},
        "pruner.reduction_factor",
        "greater than or equal to 2",
    ),
    ("n-trials-zero", {"n_trials": 0}, "n_trials", "greater than or equal to 1"),
    ("n-trials-too-many", {"n_trials": 100_001}, "n_trials", "less than or equal to 100000"),
    ("epochs-zero", {"training": {"epochs": 0}}, "training.epochs", "greater than or equal to 1"),
    (
        "epochs-too-many",
        {"training": {"epochs": 10_001}},
        "training.epochs",
        "less than or equal to 10000",
    ),
    (
        "warmup-space-reaches-epochs",
        {
            "training": {"epochs": 3},
            "search_space": {"lr": LR, "warmup_epochs": {"type": "int", "low": 0, "high": 3}},
        },
        "search_space",
        "warmup must end before training",
    ),
    (
        "warmup-choice-reaches-epochs",
        {
            "training": {"epochs": 2},
            "search_space": {"lr": LR, "warmup_epochs": {"type": "categorical", "choices": [0, 2]}},
        },
        "search_space",
        "may reach 2",
    ),
    (
        "warmup-baseline-reaches-epochs",
        {"training": {"epochs": 2}, "baseline": {"warmup_epochs": 2}},
        "baseline",
        "training.epochs is 2",
    ),
    ("unknown-field", {"priority": 3}, "priority", "Extra inputs"),
    ("unknown-nested-field", {"training": {"epochs": 2, "lr": 0.1}}, "training.lr", "Extra inputs"),
    ("imagefolder-without-root", {"data": {"kind": "imagefolder"}}, "data.root", "Field required"),
    ("unknown-arch", {"model": {"arch": "resnet5o"}}, "model.arch", "unknown architecture"),
    (
        "arch-without-linear-head",
        {"model": {"arch": "squeezenet1_1", "weights": None}},
        "model.arch",
        "linear head",
    ),
    (
        "unknown-weights",
        {"model": {"arch": "resnet18", "weights": "IMAGENET1K_V2"}},
        "model.weights",
        "known: DEFAULT, IMAGENET1K_V1",
    ),
    (
        "image-below-the-arch-minimum",
        {"model": {"arch": "inception_v3", "weights": None}},
        "data.image_size",
        "at least 75 px, not 16",
    ),
    (
        "vit-image-not-a-patch-multiple",
        {
            "model": {"arch": "vit_b_16", "weights": None},
            "data": {"kind": "digits", "image_size": 24},
        },
        "data.image_size",
        "multiple of 16",
    ),
    ("unknown-data-kind", {"data": {"kind": "csv"}}, "data", "whose kind is"),
    (
        "classes-without-digits",
        {"data": {"root": "/data", "classes": [0, 1]}},
        "data.classes",
        "needs kind digits",
    ),
    (
        "digits-with-root",
        {"data": {"kind": "digits", "root": "/data"}},
        "data.root",
        "takes no root",
    ),
    ("baseline-outside-range", {"baseline": {"lr": 0.5}}, "baseline.lr", "not a value"),
    ("baseline-wrong-type", {"baseline": {"lr": "fast"}}, "baseline.lr", "must be a number"),
    (
        "baseline-int-param-float",
        {"baseline": {"step_size": 2.5}},
        "baseline.step_size",
        "must be an integer",
    ),
    (
        "baseline-bool-param",
        {"baseline": {"nesterov": "yes"}},
        "baseline.nesterov",
        "true or false",
    ),
    ("baseline-unknown-param", {"baseline": {"dropout": 0.1}}, "baseline.dropout", "Extra inputs"),
    (
        "baseline-off-step",
        {
            "search_space": {"step_size": {"type": "int", "low": 2, "high": 10, "step": 4}},
            "baseline": {"step_size": 3},
        },
        "baseline.step_size",
        "step 4",
    ),
    (
        "baseline-not-a-choice",
        {"search_space": {"lr": {"type": "categorical", "choices": [0.001, 0.1]}}},
        "baseline.lr",
        "one of [0.001, 0.1]",
    ),
    (
        "default-baseline-outside-space",
        {
            "search_space": {
                "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}
            }
        },
        "baseline.weight_decay",
        "baseline: false",
    ),
    (
        "unknown-objective-metric",
        {"objective": {"metric": "f1"}},
        "objective.metric",
        "'val_loss' or 'val_accuracy'",
    ),
    (
        "unknown-objective-epoch",
        {"objective": {"epoch": "mean"}},
        "objective.epoch",
        "'last' or 'best'",
    ),
    (
        "unknown-augment-policy",
        {"data": {"kind": "digits", "augment": "mixup"}},
        "data.augment",
        "'trivialaugment'",
    ),
    (
        "negative-norm-weight-decay",
        {"training": {"norm_weight_decay": -0.1}},
        "training.norm_weight_decay",
        "greater than or equal to 0",
    ),
    (
        "head-lr-mult-zero",
        {"baseline": {"head_lr_mult": 0}},
        "baseline.head_lr_mult",
        "must be > 0",
    ),
    (
        "label-smoothing-one",
        {"baseline": {"label_smoothing": 1.0}},
        "baseline.label_smoothing",
        "must be < 1",
    ),
    (
        "label-smoothing-range-reaches-one",
        {"search_space": {"label_smoothing": {"type": "float", "low": 0.0, "high": 1.0}}},
        "search_space.label_smoothing",
        "bound 1.0 must be < 1",
    ),
    (
        "head-lr-mult-range-negative",
        {"search_space": {"head_lr_mult": {"type": "float", "low": -1.0, "high": 10.0}}},
        "search_space.head_lr_mult",
        "must be > 0",
    ),
    (
        "baseline-batch-size-from-data",
        {"search_space": {"batch_size": {"type": "categorical", "choices": [32, 128]}}},
        "baseline.batch_size",
        "data.batch_size",
    ),
]


@pytest.fixture(scope="module")
def storage(shared_server: Server) -> Iterator[optuna.storages.RDBStorage]:
    """A client of the server's storage, to check what the API wrote."""
    rdb = optuna.storages.RDBStorage(shared_server.storage)
    yield rdb
    rdb.engine.dispose()


def _study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return set(optuna.get_all_study_names(storage=storage))


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_spec_is_422_naming_field_and_reason(
    client: httpx.Client,
    storage: optuna.storages.BaseStorage,
    overrides: dict[str, Any],
    field: str,
    words: str,
) -> None:
    spec = {**digits_spec(unique("invalid")), **overrides}
    r = client.post(f"{API}/studies", json=spec)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field, body
    assert words in body["errors"][0]["reason"], body
    assert body["errors"][0]["field"] == field
    assert field in body["detail"] or words in body["detail"]
    assert spec["name"] not in _study_names(storage)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (
            b'{"name": "raw-nan", "data": {"kind": "digits"}, "search_space": '
            b'{"lr": {"type": "float", "low": NaN, "high": 0.1}}}',
            "search_space.lr.low",
        ),
        (b'{"name": "raw-inf", "data": {"kind": "digits"}, "n_trials": Infinity}', "n_trials"),
        (b'{"name": "raw-broken", "data": ', "body"),
        (b"[1, 2]", "body"),
    ],
)
def test_malformed_json_is_422(
    client: httpx.Client, storage: optuna.storages.BaseStorage, raw: bytes, field: str
) -> None:
    r = client.post(f"{API}/studies", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert not {"raw-nan", "raw-inf", "raw-broken"} & _study_names(storage)


def test_duplicate_name_is_409_and_keeps_the_first(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("dup")
    assert client.post(f"{API}/studies", json=digits_spec(name, n_trials=3)).status_code == 201
    r = client.post(f"{API}/studies", json=digits_spec(name, n_trials=7))
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "name"
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    assert study.user_attrs["spec"]["n_trials"] == 3
    assert len(study.trials) == 1  # one baseline, not two


def test_created_study_holds_spec_and_baseline(client: httpx.Client, shared_server: Server) -> None:
    name = unique("created")
    baseline = {"lr": 0.02, "momentum": 0.95, "step_size": 4, "gamma": 0.2, "warmup_epochs": 1}
    r = client.post(f"{API}/studies", json=digits_spec(name, baseline=baseline))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name and body["state"] == "running" and body["n_trials"] == 4
    assert body["counts"] == {
        "waiting": 1,
        "running": 0,
        "paused": 0,
        "complete": 0,
        "pruned": 0,
        "fail": 0,
    }
    assert body["dashboard_url"].startswith(shared_server.url + "/dashboard/")
    assert body["spec"]["baseline"]["lr"] == 0.02

    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    assert study.user_attrs["spec"]["name"] == name
    assert set(study.user_attrs["search_space"]) == set(baseline)
    [waiting] = study.trials
    assert waiting.state == optuna.trial.TrialState.WAITING
    assert waiting.system_attrs["fixed_params"] == baseline
    assert waiting.user_attrs["baseline"] is True


def test_baseline_false_enqueues_nothing(client: httpx.Client, shared_server: Server) -> None:
    name = unique("nobase")
    assert client.post(f"{API}/studies", json=digits_spec(name, baseline=False)).status_code == 201
    assert optuna.load_study(study_name=name, storage=shared_server.storage).trials == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"sampler": {"name": "random", "seed": 3}},
        {"sampler": {"name": "cmaes", "sigma0": 0.5}},
        {"sampler": {"name": "qmc", "qmc_type": "halton"}},
        {"sampler": {"name": "grid"}, "search_space": "sgd_steplr_grid"},
        {"pruner": {"name": "percentile", "percentile": 25.0}},
        {"pruner": {"name": "successive_halving", "reduction_factor": 3}},
        {"pruner": {"name": "hyperband", "min_resource": 1, "max_resource": 9}},
        {"pruner": {"name": "threshold", "upper": 3.0}},
        {"pruner": {"name": "none"}},
        {"search_space": "sgd_steplr_warmup_wd", "baseline": {"weight_decay": 1e-4}},
        {
            "search_space": {
                "nesterov": {"type": "categorical", "choices": [False, True]},
                "step_size": {"type": "int", "low": 2, "high": 10, "step": 4},
            },
            "baseline": {"nesterov": True, "step_size": 6},
        },
        {"search_space": "sgd_finetune_full", "objective": {"metric": "val_accuracy"}},
        {
            "search_space": {
                "head_lr_mult": {"type": "float", "low": 1.0, "high": 10.0, "log": True},
                "label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
            },
            "baseline": {"head_lr_mult": 10.0, "label_smoothing": 0.1},
            "objective": {"metric": "val_loss", "epoch": "best"},
            "training": {"epochs": 3, "norm_weight_decay": None},
            "data": {"kind": "digits", "augment": "randaugment"},
        },
    ],
    ids=[
        "random",
        "cmaes",
        "qmc",
        "grid",
        "percentile",
        "successive-halving",
        "hyperband",
        "threshold",
        "no-pruner",
        "richer-space",
        "categorical-and-step",
        "finetune-full",
        "knobs-searched-and-fixed",
    ],
)
def test_valid_variants_are_created(
    client: httpx.Client, shared_server: Server, overrides: dict[str, Any]
) -> None:
    name = unique("variant")
    r = client.post(f"{API}/studies", json=digits_spec(name, **overrides))
    assert r.status_code == 201, r.text
    # The baseline is handed out first, with exactly the recipe's values.
    r = client.post(f"{API}/trials/claim", json={"worker_id": "spec-test", "study": name})
    assert r.status_code == 200, r.text
    assert r.json()["is_baseline"] is True
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    assert study.trials[0].params == r.json()["params"]


# --- search_spaces/: data validated by the one schema (no server needed) -----------------

SPACE_FILES = sorted(DEFAULT_SEARCH_SPACES.glob("*.yaml"))


def test_the_folder_has_the_core_and_a_richer_space() -> None:
    names = {p.stem for p in SPACE_FILES}
    assert "sgd_steplr_warmup" in names
    core = set(load_named_space("sgd_steplr_warmup", DEFAULT_SEARCH_SPACES).root)
    assert core == {"lr", "momentum", "step_size", "gamma", "warmup_epochs"}
    assert any(set(load_named_space(n, DEFAULT_SEARCH_SPACES).root) > core for n in names)


@pytest.mark.parametrize("path", SPACE_FILES, ids=[p.stem for p in SPACE_FILES])
def test_every_search_space_file_loads_and_validates(path: Path) -> None:
    space = load_named_space(path.stem, path.parent)
    assert isinstance(space, SearchSpace) and space.root
    assert set(space.root) <= set(HYPERPARAMETERS)
    distributions = to_distributions(space)
    assert set(distributions) == set(space.root)
    if "grid" in path.stem:
        assert all(len(values) >= 1 for values in grid_values(space).values())


def test_a_broken_space_file_is_refused_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("lr: {type: float, low: 1, high: 0.5}\n")
    with pytest.raises(ValueError, match="less than high"):
        load_named_space("broken", tmp_path)
    with pytest.raises(ValueError, match="no search space named"):
        load_named_space("absent", tmp_path)


@pytest.mark.parametrize(("given", "stored"), [
    (True, "flip_crop"), (False, "none"), ("trivialaugment", "trivialaugment"), (None, "flip_crop"),
])  # fmt: skip
def test_augment_booleans_keep_working_as_policies(
    client: httpx.Client, given: Any, stored: str
) -> None:
    """Today's augment: true/false is flip_crop/none; the spec shown (and sent to workers)
    names the policy, and the new sections come with their defaults."""
    data = {"kind": "digits", "image_size": 16}
    if given is not None:
        data["augment"] = given
    r = client.post(f"{API}/studies", json=digits_spec(unique("augment"), data=data))
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["data"]["augment"] == stored
    assert spec["objective"] == {"metric": "val_loss", "epoch": "last"}
    assert spec["training"]["norm_weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("model", "data", "decided"),
    [
        # Unset: the weights' own evaluation preset (torchvision's weights.transforms()).
        ({"arch": "resnet50"}, {}, (224, 232, "bilinear")),  # DEFAULT is IMAGENET1K_V2
        ({"arch": "resnet50", "weights": "IMAGENET1K_V1"}, {}, (224, 256, "bilinear")),
        ({"arch": "efficientnet_b3"}, {}, (300, 320, "bicubic")),
        ({"arch": "vit_b_16", "weights": "IMAGENET1K_SWAG_E2E_V1"}, {}, (384, 384, "bicubic")),
        # A crop of one's own resizes by 256/224, as before presets; the interpolation stays.
        ({"arch": "efficientnet_b3"}, {"image_size": 160}, (160, 183, "bicubic")),
        ({"arch": "resnet18", "weights": None}, {}, (224, 256, "bilinear")),
        (
            {"arch": "resnet18", "weights": None},
            {"image_size": 64, "resize_size": 64, "interpolation": "bicubic"},
            (64, 64, "bicubic"),
        ),
    ],
)
def test_preprocessing_defaults_to_the_weights_preset(
    client: httpx.Client, model: dict, data: dict, decided: tuple
) -> None:
    spec = digits_spec(unique("preset"), model=model, data={"kind": "digits", **data})
    r = client.post(f"{API}/studies", json=spec)
    assert r.status_code == 201, r.text
    shown = r.json()["spec"]["data"]
    assert (shown["image_size"], shown["resize_size"], shown["interpolation"]) == decided
    worker = ScriptedWorker(client, "w-preset", spec["name"])
    sent = worker.claim().body["spec"]["data"]  # what workers get: decided, no defaults left
    assert (sent["image_size"], sent["resize_size"], sent["interpolation"]) == decided


def test_a_resize_below_the_crop_is_422(client: httpx.Client) -> None:
    spec = digits_spec(
        unique("resize"), data={"kind": "digits", "image_size": 32, "resize_size": 24}
    )
    r = client.post(f"{API}/studies", json=spec)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "data.resize_size"
    assert "below image_size 32" in r.json()["errors"][0]["reason"]


def test_a_named_space_keeps_only_warmups_that_end_before_training(client: httpx.Client) -> None:
    """The default space's warmup 0..3 fits 10 epochs; a 2-epoch study samples 0..1 only."""
    name = unique("short-warmup")
    spec = digits_spec(
        name,
        training={"epochs": 2, "seed": 0},
        n_trials=12,
        sampler={"name": "random", "seed": 3},
        baseline=False,
    )
    assert client.post(f"{API}/studies", json=spec).status_code == 201
    worker = ScriptedWorker(client, "w-warmup", name)
    warmups = {worker.claim().params["warmup_epochs"] for _ in range(12)}
    assert warmups == {0, 1}


def test_fit_warmup_clips_ranges_and_choices_and_leaves_what_cannot_fit() -> None:
    lr = {"type": "float", "low": 1e-3, "high": 0.1, "log": True}
    ranged = SearchSpace.model_validate(
        {"lr": lr, "warmup_epochs": {"type": "int", "low": 0, "high": 6, "step": 2}}
    )
    assert fit_warmup(ranged, 5).root["warmup_epochs"].high == 4
    assert fit_warmup(ranged, 10) == ranged
    assert fit_warmup(ranged, 1).root["warmup_epochs"].choices == [0]  # 1 epoch: no warmup
    chosen = SearchSpace.model_validate(
        {"lr": lr, "warmup_epochs": {"type": "categorical", "choices": [0, 3, 5]}}
    )
    assert fit_warmup(chosen, 4).root["warmup_epochs"].choices == [0, 3]
    late = SearchSpace.model_validate(
        {"lr": lr, "warmup_epochs": {"type": "int", "low": 3, "high": 5}}
    )
    assert fit_warmup(late, 3) == late  # nothing fits: the study is refused (schedule_problems)
