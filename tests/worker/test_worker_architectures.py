"""The server's table of architectures (service/architectures.json, read without torch) is the
installed torchvision's, as the worker builds it."""

from __future__ import annotations

import json

import pytest
import torchvision

from service.architectures import TABLE
from worker.architectures import NO_LINEAR_HEAD, build_on_meta, has_linear_head, supported
from worker.models import find_head


def test_the_shipped_table_is_torchvisions() -> None:
    assert json.loads(TABLE.read_text()) == supported(), (
        "torchvision changed: python -m worker.architectures > service/architectures.json"
    )


@pytest.mark.slow  # builds every architecture (on the meta device: no memory, no weights)
def test_every_listed_architecture_has_a_linear_head_and_the_others_do_not() -> None:
    unbuildable_on_meta = []
    for arch in supported():
        try:
            model = build_on_meta(arch)
        except NotImplementedError:  # regnets copy a tensor while they are built
            unbuildable_on_meta.append(arch)
            continue
        find_head(model)
    assert {a.split("_")[0] for a in unbuildable_on_meta} <= {"regnet"}, unbuildable_on_meta
    # The regnets share one builder: one small one, built for real, stands for them.
    find_head(torchvision.models.get_model("regnet_x_400mf", weights=None))
    for arch in NO_LINEAR_HEAD:
        assert not has_linear_head(arch)
