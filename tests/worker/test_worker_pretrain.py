from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

import worker.pretrain
from worker.engine import fine_tune
from worker.pretrain import pretrain_digits


@pytest.mark.slow
def test_pretrain_writes_a_state_dict_once_and_the_demo_fine_tunes_it(
    tmp_path: Path, make_job, caches, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models" / "digits04.pt"
    path = pretrain_digits(
        out, arch="mobilenet_v3_small", classes=(0, 1), image_size=16, epochs=1, caches=caches
    )
    assert path == out
    state = torch.load(path, weights_only=True)
    model = torchvision.models.mobilenet_v3_small(num_classes=2)
    model.load_state_dict(state)  # a complete state dict for a 2-class model
    assert list(tmp_path.joinpath("models").iterdir()) == [out]  # no temp files left

    monkeypatch.setattr(worker.pretrain, "fine_tune", lambda *a, **k: pytest.fail("retrained"))
    assert pretrain_digits(out, arch="mobilenet_v3_small", classes=(0, 1)) == out

    # the demo: fine-tune the pretrained backbone on other digits through weights_path
    job = make_job(
        model={"weights_path": str(path), "freeze_backbone": True},
        data={"classes": [5, 6]},
        training={"epochs": 1},
    )
    reports = []
    outcome = fine_tune(job, caches, lambda r: reports.append(r) or False)
    assert outcome.status == "completed"
    assert [r.epoch for r in reports] == [0]
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier.3.")}
    final = outcome.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in backbone.items())
