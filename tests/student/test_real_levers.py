"""Issue 30's training levers for dim real cloud: gain randomisation and KD on the unlabelled chips only."""

import numpy as np
import pytest
import torch

from cloudkd.common.errors import DataError
from cloudkd.data.augment import reflectance_gain
from cloudkd.data.dataset import image_nodata
from cloudkd.data.normalise import normalise
from cloudkd.student.distill import LossConfig, cwd, pixel_kd


def _batch(seed=0, n=4, size=16):
    g = np.random.default_rng(seed)
    refl = g.uniform(0.02, 1.2, (n, 4, size, size)).astype(np.float32)
    refl[:, :, :3, :3] = 0.0  # a nodata corner (reflectance 0 in every band)
    mask = (refl[:, :3].mean(1, keepdims=True) > 0.5).astype(np.float32)
    return refl, {"image": torch.from_numpy(normalise(refl)), "mask": torch.from_numpy(mask.copy())}


def test_gain_darkens_the_reflectance_the_image_stands_for():
    refl, batch = _batch()
    mask = batch["mask"].clone()
    n = reflectance_gain(batch, p=1.0, low=0.5, high=0.5, generator=torch.Generator().manual_seed(0))
    assert n == 4
    # every chip is now the normalised reflectance at half the brightness; nodata stays nodata; labels unchanged
    np.testing.assert_allclose(batch["image"].numpy(), normalise(0.5 * refl), atol=1e-5)
    assert torch.equal(batch["mask"], mask)
    nodata = image_nodata(batch["image"])  # exactly nodata still, as the prediction rule tests it
    assert nodata[:, :3, :3].all() and nodata.sum() == 4 * 9


def test_gain_draws_one_gain_per_chip_within_the_range_and_spares_the_rest():
    refl, batch = _batch(n=64, size=8)
    before = batch["image"].clone()
    n = reflectance_gain(batch, p=0.5, low=0.4, high=1.0, generator=torch.Generator().manual_seed(3))
    changed = [i for i in range(64) if not torch.equal(batch["image"][i], before[i])]
    assert n == len(changed) and 15 < n < 49  # about half of 64
    for i in range(64):
        valid = refl[i, 0] > 0.05
        # the reflectance the image stands for, over the one the chip had: one gain for every band and pixel
        back = batch["image"][i].numpy() * np.array([.30, .27, .25, .21])[:, None, None] + \
            np.array([.30, .30, .30, .33])[:, None, None]
        ratio = back[:, valid] / refl[i][:, valid]
        assert np.ptp(ratio) < 1e-3
        g = ratio.mean()
        assert (0.4 - 1e-4 <= g <= 1.0 + 1e-4) and ((i in changed) == (abs(g - 1) > 1e-6))


def test_gain_off_changes_nothing_and_a_bad_range_is_refused():
    _, batch = _batch()
    before = batch["image"].clone()
    assert reflectance_gain(batch, 0.0, 0.4, torch.Generator()) == 0
    assert torch.equal(batch["image"], before)
    with pytest.raises(ValueError, match="gain range"):
        reflectance_gain(batch, 0.5, 0.0, torch.Generator())


@pytest.mark.parametrize("kd", ["pixel", "cwd"])
def test_kd_on_unlabelled_distils_only_the_unlabelled_chips(kd):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    target = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    labelled = torch.tensor([1.0, 0.0, 1.0, 0.0])
    fn = pixel_kd if kd == "pixel" else cwd
    loss = LossConfig(1.0, 1.0, kd, 2.0, 0, "unlabelled")
    parts = loss(student, target, teacher, labelled)
    assert torch.allclose(parts["kd"], fn(student[[1, 3]], teacher[[1, 3]], 2.0))
    every = LossConfig(1.0, 1.0, kd, 2.0, 0, "all")(student, target, teacher, labelled)
    assert torch.allclose(every["kd"], fn(student, teacher, 2.0)) and not torch.allclose(every["kd"], parts["kd"])
    # a batch of labelled chips only: no KD at all
    assert float(loss(student, target, teacher, torch.ones(4))["kd"]) == 0.0
    with pytest.raises(ValueError, match="kd_on"):
        LossConfig(1.0, 1.0, kd, 2.0, 0, "some")


def test_module_gain_reaches_the_student_and_the_online_teacher():
    from cloudkd.student.module import StudentModule

    seen = []

    class Teacher:
        def logits(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 1, *x.shape[2:])

    _, batch = _batch(n=2)
    original = batch["image"].clone()
    m = StudentModule("unet-s", kd_weight=1.0, teacher_mode="online", gain=1.0, gain_min=0.5)
    m.attach_teacher(Teacher())
    m.log = lambda *a, **k: None
    m.training_step(batch, 0)
    assert len(seen) == 1 and torch.equal(seen[0], batch["image"])  # the teacher saw the darkened batch
    assert not torch.equal(batch["image"], original)
    with pytest.raises(ValueError, match="gain"):
        StudentModule("unet-s", gain=1.5)


def test_kd_on_unlabelled_needs_an_unlabelled_pool(small_data, tmp_path):
    from cloudkd.student.train import TrainConfig, fit

    cfg = TrainConfig(data=str(small_data), out=str(tmp_path / "run"), kd_weight=1.0, teacher_onnx="x.onnx",
                      kd_on="unlabelled", progress=False)
    with pytest.raises(DataError, match="--kd-on unlabelled"):
        fit(cfg)
    assert not (tmp_path / "run").exists()


def test_the_levers_from_the_command_line_reach_the_run(small_data, tmp_path, capsys):
    import json

    from conftest import invoke, one_line_refusal

    run = tmp_path / "run"
    code, text = invoke(["student", "train", small_data, "--out", run, "--model", "unet-xs", "--epochs", 1, "--steps",
                         1, "--batch", 2, "--crop", 32, "--accelerator", "cpu", "--gain", 0.5, "--gain-min", 0.3],
                        capsys)
    assert code == 0, text
    cfg = json.loads((run / "student.json").read_text())["config"]
    assert (cfg["gain"], cfg["gain_min"], cfg["kd_on"]) == (0.5, 0.3, "all")
    for bad, says in ((["--gain", 1.5], "--gain"), (["--gain-min", 0], "--gain-min"), (["--kd-on", "some"], "--kd-on")):
        code, text = invoke(["student", "train", small_data, "--out", tmp_path / "r2", *bad], capsys)
        one_line_refusal(code, text, says)
    assert not (tmp_path / "r2").exists()
