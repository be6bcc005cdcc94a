"""The one prediction rule (cloudkd.common.infer): threshold and nodata, shared by every path that makes masks."""

import json
import math
import shutil
import zipfile

import numpy as np
import pytest
import torch

from cloudkd.common.infer import (logit_threshold, masks_from_logits, masks_from_probabilities, nodata_mask,
                                  predict_masks)


def test_logits_and_probabilities_give_the_same_masks_at_any_threshold():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (2, 1, 16, 16)).astype(np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    refl = rng.uniform(0.01, 0.5, (2, 4, 16, 16)).astype(np.float32)
    refl[0, :, :4, :4] = 0  # a nodata corner
    refl[1, :2, 5, 5] = 0  # zero in two bands only: data
    nd = nodata_mask(refl)
    assert nd.sum() == 16 and nd[0, :4, :4].all()
    for t in (0.2, 0.5, 0.83):
        a = masks_from_logits(torch.from_numpy(z), t, nd)
        b = masks_from_logits(z, t, nd)
        c = masks_from_probabilities(p[:, 0], t, nd)
        want = ((p[:, 0] > t) & ~nd).astype(np.uint8)
        assert np.array_equal(a, want) and np.array_equal(b, want) and np.array_equal(c, want), t
    with pytest.raises(ValueError):
        logit_threshold(1.0)
    with pytest.raises(ValueError):
        masks_from_probabilities(p[:, 0], 0.0)


def conv_case(size: int):
    """A seeded one-layer model, a batch of two (size x size) chips, and nodata over the second chip's lower half."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 1, 3, padding=1).eval()
    x = torch.randn(2, 4, size, size)
    nd = np.zeros((2, size, size), bool)
    nd[1, size // 2:, :] = True
    return model, x, nd


def test_predict_masks_is_tta_then_threshold_then_nodata():
    model, x, nd = conv_case(12)
    with torch.no_grad():
        z = (model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2)) / 3
    want = (z[:, 0] > math.log(0.3 / 0.7)).numpy() & ~nd
    assert np.array_equal(predict_masks(model, x, nd, 0.3, tta=True), want.astype(np.uint8))


def test_validation_scores_at_the_training_threshold():
    from cloudkd.student.module import StudentModule

    m = StudentModule("unet-xs", threshold=0.7)
    logits = torch.tensor([[[[-1.0, 0.5, 0.9, 2.0]]]])
    mask = torch.tensor([[[[0.0, 1.0, 1.0, 1.0]]]])
    m.forward = lambda x: logits  # noqa: E731 - a fixed "network"
    m.log = lambda *a, **k: None  # noqa: E731
    m.validation_step({"image": torch.zeros(1, 4, 1, 4), "mask": mask}, 0)
    # p = sigmoid(0.5) = 0.62 is below 0.7: two of the three cloud pixels are found
    assert (m._val.tp, m._val.fp, m._val.fn, m._val.tn) == (2, 0, 1, 1)


def test_pack_ships_the_runs_training_threshold_unless_told_otherwise(student, tmp_path):
    from cloudkd.submission.pack import pack

    run = tmp_path / "run"
    shutil.copytree(student, run, ignore=shutil.ignore_patterns("checkpoints", "logs", "tensorboard"))
    info = json.loads((run / "student.json").read_text())
    assert info["config"]["threshold"] == 0.5  # recorded by training
    info["config"]["threshold"] = 0.35
    (run / "student.json").write_text(json.dumps(info))

    def shipped(**kw):
        z = tmp_path / f"s{len(kw)}.zip"
        pack(run, z, chip_size=96, **kw)
        return json.loads(zipfile.ZipFile(z).read("assets/config.json"))["threshold"]

    assert shipped() == 0.35
    assert shipped(threshold=0.6) == 0.6
