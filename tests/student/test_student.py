"""Students, distillation losses, augmentation alignment and Lightning training (incl. DDP on two CPU processes)."""

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import tifffile
import torch
from typer.testing import CliRunner

from cloudkd.cli import app
from cloudkd.data import load_index, normalise, read_chip, read_label, resolve_split
from cloudkd.data.augment import Augment, cloud_paste
from cloudkd.data.soft import write_soft
from cloudkd.onboard.export import export_onnx
from cloudkd.student.distill import LossConfig, bce_dice, boundary_band, cwd, pixel_kd, prob_to_logit
from cloudkd.student.models import build_model, list_presets
from cloudkd.student.train import TrainConfig, fit
from cloudkd.student.runs import load_student
from cloudkd.student.unet import PRESETS, CompactUNet
from cloudkd.common.sizes import count_params

runner = CliRunner()
from cloudkd.teacher.plans import NNUNET_2D_PARAMS  # noqa: E402 - nnU-Net's 2d plan (test_teacher checks it)


# ---------------------------------------------------------------------------------------------------- models
REPO = Path(__file__).resolve().parents[2]


def _documented_presets():
    """The presets as the docs give them: README's table (preset -> (stage widths, params, times smaller than
    nnU-Net's 2d plan)) and docs/studies.md's table of the on-board candidates (preset -> params)."""
    readme = (REPO / "README.md").read_text()
    table = {m["name"]: (tuple(int(w) for w in m["widths"].split(",")), int(m["params"].replace(",", "")),
                         int(m["times"]))
             for m in re.finditer(r"^\| `(?P<name>unet-\w+)`[^|]*\| (?P<widths>[\d, ]+) \| (?P<params>[\d,]+) \| "
                                  r"(?P<times>\d+)x \|$", readme, re.M)}
    studies = (REPO / "docs" / "studies.md").read_text()
    candidates = {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^\| (unet-s2d\w*) \| ([\d,]+) \|", studies,
                                                                        re.M)}
    return table, candidates


def test_presets_are_the_documented_networks_and_segment_a_chip(small_data):
    """Every preset has the parameters the docs quote (summed here over its tensors), README's widths and factor
    to nnU-Net's plan, and turns a 4-band chip into one logit map of the chip's size (odd sizes too)."""
    table, candidates = _documented_presets()
    assert sorted(table) == ["unet-l", "unet-m", "unet-s", "unet-xs"]
    assert sorted(candidates) == ["unet-s2d2", "unet-s2d2r", "unet-s2d4"]
    documented = {**{name: row[1] for name, row in table.items()}, **candidates}
    assert sorted(documented) == sorted(PRESETS)  # no preset left out of the docs
    split = resolve_split(small_data)
    chip = torch.from_numpy(normalise(read_chip(split.features_dir / split.chip_ids()[0])))[None]
    assert chip.shape == (1, 4, 96, 96)
    for name, n in documented.items():
        m = build_model(name).eval()
        assert sum(t.numel() for t in m.parameters()) == n, name
        if name in table:
            assert tuple(PRESETS[name]["widths"]) == table[name][0], name
            assert round(NNUNET_2D_PARAMS / n) == table[name][2], name
        with torch.no_grad():
            for x in (chip, torch.zeros(1, 4, 512, 512), torch.zeros(2, 4, 100, 72)):
                out = m(x)
                assert out.shape == (x.shape[0], 1, *x.shape[2:]) and torch.isfinite(out).all(), name
    assert documented["unet-s"] <= 165_000 and NNUNET_2D_PARAMS / documented["unet-s"] >= 280
    assert documented["unet-xs"] < documented["unet-s"] < documented["unet-m"] < documented["unet-l"]
    assert all(n <= 165_000 for n in candidates.values())  # the on-board candidates' bound


def test_channels_last_on_cpu_changes_the_layout_not_the_numbers():
    """On CPU the student runs NHWC (faster there); logits and gradients equal the NCHW ones to float rounding."""
    torch.manual_seed(0)
    model = CompactUNet(widths=(8, 16, 24))
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    first_conv.register_forward_pre_hook(lambda m, inp: seen.append(
        inp[0].is_contiguous(memory_format=torch.channels_last) and not inp[0].is_contiguous()))
    x = torch.randn(2, 4, 70, 52)
    outs, grads = [], []
    try:
        for nhwc in (False, True):
            CompactUNet.nhwc_on_cpu = nhwc
            model.zero_grad()
            y = model(x)
            (y.square().mean() + y[:, :, 5:30, 7:40].mean()).backward()
            outs.append(y.detach())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        CompactUNet.nhwc_on_cpu = True
    assert seen == [False, True]
    assert outs[0].shape == (2, 1, 70, 52) and outs[0].abs().max() > 0.01
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-3)


def test_smp_call_shape_and_variants():
    m = CompactUNet(in_channels=4, classes=1)
    assert m(torch.randn(1, 4, 64, 64)).shape == (1, 1, 64, 64)
    sep = CompactUNet(widths=(8, 16, 24, 32, 72), conv="separable")
    assert count_params(sep) < count_params(m) / 3
    for kw in ({"norm": "group"}, {"norm": "none"}, {"up": "transpose"}, {"widths": (8, 16)}):
        assert CompactUNet(**kw)(torch.randn(1, 4, 33, 47)).shape == (1, 1, 33, 47)
    assert build_model("unet:8-16-32")(torch.zeros(1, 4, 32, 32)).shape == (1, 1, 32, 32)
    smp_model = build_model("smp:Unet:resnet18")
    assert smp_model(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 64, 64)
    for bad in ("unet-zz", "unet:8-x", "smp:Nope:resnet18", "smp:Unet"):
        with pytest.raises(ValueError):
            build_model(bad)
    with pytest.raises(ValueError, match="norm"):
        CompactUNet(norm="layer")


def _conv_kind(block):
    """'standard' (one 3x3 conv) or 'separable' (depthwise 3x3 over every input channel, then 1x1)."""
    convs = [m for m in block if isinstance(m, torch.nn.Conv2d)]
    if len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].groups == 1:
        return "standard"
    dw, pw = convs
    assert dw.kernel_size == (3, 3) and dw.groups == dw.in_channels == dw.out_channels
    assert pw.kernel_size == (1, 1) and pw.in_channels == dw.out_channels
    return "separable"


@pytest.mark.parametrize("name", list(PRESETS))
def test_separable_convs_in_every_stage_but_the_first(name):
    """conv="separable": the first encoder stage (on the 4 input bands) stays standard, every other encoder and
    decoder stage is depthwise-separable, whatever its input width (unet-xs's second stage reads 4 channels)."""
    widths = PRESETS[name]["widths"]
    for conv in ("separable", "standard"):
        m = build_model(name, model_kwargs={"conv": conv})
        kinds = [[_conv_kind(b) for b in stage] for stage in list(m.encoder) + list(m.decoder)]
        want = [["standard"] * 2] + [[conv] * 2] * (2 * len(widths) - 2)
        assert kinds == want, (name, conv, kinds)
    # parameters by hand for unet-xs (4, 8, 16, 32, 32), separable, batch norm, bilinear up (1x1 projections)
    sep = lambda cin, cout: 9 * cin + cin * cout + 2 * cout  # noqa: E731  depthwise + pointwise + BN
    std = lambda cin, cout: 9 * cin * cout + 2 * cout  # noqa: E731
    if name == "unet-xs":
        enc = std(4, 4) + std(4, 4) + sum(sep(a, b) + sep(b, b) for a, b in ((4, 8), (8, 16), (16, 32), (32, 32)))
        ups = 32 * 32 + 32 * 16 + 16 * 8 + 8 * 4
        dec = sum(sep(2 * w, w) + sep(w, w) for w in (32, 16, 8, 4))
        assert count_params(build_model(name, model_kwargs={"conv": "separable"})) == enc + ups + dec + 4 + 1 == 13_693


def test_cli_student_list_json():
    r = runner.invoke(app, ["student", "list", "--json"])
    table, candidates = _documented_presets()
    assert r.exit_code == 0
    assert json.loads(r.output) == {**{name: row[1] for name, row in table.items()}, **candidates}


# ---------------------------------------------------------------------------------------------------- losses
def test_kd_losses_zero_when_student_equals_teacher():
    z = torch.randn(2, 1, 16, 16) * 3
    for fn in (pixel_kd, cwd):
        for t in (1.0, 2.0, 4.0):
            assert fn(z, z.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
            assert fn(z + torch.randn_like(z), z, t).item() > 1e-4


def test_pixel_kd_hand_computed_and_gradient_direction():
    zs, zt, t = torch.tensor([[[[0.5]]]], requires_grad=True), torch.tensor([[[[2.0]]]]), 2.0
    ps, pt = 1 / (1 + math.exp(-0.25)), 1 / (1 + math.exp(-1.0))
    expect = t * t * (pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps)))
    loss = pixel_kd(zs, zt, t)
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    loss.backward()
    assert zs.grad.item() == pytest.approx(t * (ps - pt), rel=1e-5)  # d/dz_s: T (p_s - p_t) < 0 here
    assert zs.grad.item() < 0  # gradient descent raises the student logit towards the teacher's


def _cwd_reference(zs, zt, t):
    """CWD written out in float64 numpy: for each image and channel c in (z, -z), q = softmax(c_t / T) and
    p = softmax(c_s / T) over all H x W positions; the loss is T^2 times the mean over (image, channel) of
    KL(q || p). Its gradient w.r.t. z_s: T / (2 N) * ((p_z - q_z) - (p_-z - q_-z)) per pixel."""
    n = zs.shape[0]
    zs, zt = zs.reshape(n, -1).astype(np.float64), zt.reshape(n, -1).astype(np.float64)

    def softmax(a):
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    loss, grad = 0.0, np.zeros_like(zs)
    for sign in (1.0, -1.0):
        q, p = softmax(sign * zt / t), softmax(sign * zs / t)
        loss += (q * (np.log(q) - np.log(p))).sum()
        grad += sign * (p - q)
    return loss / (2 * n) * t * t, grad * t / (2 * n)


def test_cwd_value_and_gradient_match_an_independent_reference():
    g = torch.Generator().manual_seed(0)
    for shape, t in (((2, 1, 5, 7), 1.0), ((3, 1, 4, 4), 2.0), ((1, 1, 6, 3), 4.0)):
        zs = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        zt = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        want, want_grad = _cwd_reference(zs.numpy(), zt.numpy(), t)
        x = zs.clone().requires_grad_(True)
        loss = cwd(x, zt, t)
        loss.backward()
        assert loss.item() == pytest.approx(want, rel=1e-10)
        np.testing.assert_allclose(x.grad.numpy().reshape(shape[0], -1), want_grad, rtol=1e-8, atol=1e-14)
        assert torch.autograd.gradcheck(lambda a: cwd(a, zt, t), (zs.clone().requires_grad_(True),))
        # float32 (what training uses) agrees with the float64 reference to float rounding
        assert cwd(zs.float(), zt.float(), t).item() == pytest.approx(want, rel=1e-4)


def test_cwd_hand_computed_at_temperature_t_on_the_logit():
    """Binary CWD: the spatial softmax of the cloud logit z (and of -z) at temperature T, KL, times T^2."""
    zs = torch.tensor([0.0, 1.0, -2.0, 3.0]).reshape(1, 1, 2, 2)
    zt = torch.tensor([2.0, -1.0, 0.5, 4.0]).reshape(1, 1, 2, 2)
    for t in (1.0, 2.0, 4.0):
        expect = 0.0
        for sign in (1.0, -1.0):
            q = torch.softmax(sign * zt.flatten() / t, 0)
            p = torch.softmax(sign * zs.flatten() / t, 0)
            expect += (q * (q.log() - p.log())).sum().item() / 2
        assert cwd(zs, zt, t).item() == pytest.approx(expect * t * t, rel=1e-5)


def test_online_teacher_logits_are_capped_like_offline_soft_labels():
    """An online teacher's logits are clipped to what a stored soft label can hold, so both modes teach alike."""
    from cloudkd.student.distill import LOGIT_CAP
    from cloudkd.student.module import StudentModule

    z = torch.tensor([-30.0, -3.0, 0.0, 2.0, 30.0]).reshape(1, 1, 1, 5)

    class Fixed:
        def logits(self, x):
            return z.expand(x.shape[0], 1, *x.shape[2:])

    online = StudentModule("unet-xs", kd_weight=1.0, teacher_mode="online")
    online.attach_teacher(Fixed())
    got = online._teacher_logits({"image": torch.zeros(1, 4, 1, 5)})
    offline = StudentModule("unet-xs", kd_weight=1.0, teacher_mode="offline")
    soft = torch.sigmoid(z)
    stored = torch.round(soft * 255) / 255  # what write_soft / read_soft keep
    assert torch.allclose(got[..., [0, 4]], offline._teacher_logits({"soft": stored})[..., [0, 4]], atol=1e-5)
    assert got.abs().max().item() == pytest.approx(LOGIT_CAP) and LOGIT_CAP == pytest.approx(math.log(509))
    assert torch.equal(got[..., 1:4], z[..., 1:4])  # inside the cap nothing changes


def test_loss_config_combines_and_checks():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    soft = torch.rand(2, 1, 8, 8)
    both = LossConfig(1.0, 0.5, "pixel", 2.0)(logits, target, prob_to_logit(soft))
    assert both["loss"].item() == pytest.approx(bce_dice(logits, target).item()
                                                + 0.5 * pixel_kd(logits, prob_to_logit(soft), 2.0).item(), rel=1e-5)
    only_kd = LossConfig(0.0, 1.0, "cwd", 4.0)(logits, None, prob_to_logit(soft))
    assert set(only_kd) == {"kd", "loss"}
    with pytest.raises(ValueError, match="needs labels"):
        LossConfig()(logits)
    with pytest.raises(ValueError, match="needs teacher"):
        LossConfig(1.0, 1.0)(logits, target)
    with pytest.raises(ValueError, match="unknown KD"):
        LossConfig(kd="dist")
    assert torch.isfinite(prob_to_logit(torch.tensor([0.0, 1.0]))).all()


def test_boundary_tolerant_loss_ignores_only_a_band_around_label_outlines():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:24, 8:24] = 1.0
    band = boundary_band(target, 2)
    # the band is the 2-px strip on both sides of the square's outline, nothing else
    inner, outer = torch.zeros_like(target, dtype=torch.bool), torch.zeros_like(target, dtype=torch.bool)
    inner[..., 10:22, 10:22] = True
    outer[..., 6:26, 6:26] = True
    assert torch.equal(band, outer & ~inner)
    # errors inside the band cost nothing; the same errors elsewhere do
    good = (target * 2 - 1) * 8.0
    edge = good.clone()
    edge[band] = -edge[band]
    assert bce_dice(edge, target, ignore_band=2).item() == pytest.approx(bce_dice(good, target, ignore_band=2).item(),
                                                                         abs=1e-6)
    assert bce_dice(edge, target).item() > bce_dice(good, target).item() + 0.5
    far = good.clone()
    far[..., 0:4, 0:4] = 8.0  # cloud called on clear ground well away from any outline
    assert bce_dice(far, target, ignore_band=2).item() > bce_dice(good, target, ignore_band=2).item() + 0.01
    assert LossConfig(boundary_ignore=2)(edge, target)["hard"].item() == pytest.approx(
        bce_dice(edge, target, ignore_band=2).item())
    with pytest.raises(ValueError, match="boundary_ignore"):
        LossConfig(boundary_ignore=-1)


def test_cloud_paste_moves_a_cloudy_chips_cloud_onto_a_clear_one():
    g = torch.Generator().manual_seed(0)
    image = torch.stack([torch.full((4, 16, 16), float(i)) for i in range(4)])
    mask = torch.zeros(4, 1, 16, 16)
    mask[1, :, 4:12, 4:12] = 1.0  # the only donor: 25 % cloud
    mask[2, :, :2, :] = 1.0  # 12.5 %: neither donor nor target
    soft = mask.clone() * 0.9
    batch = {"image": image.clone(), "mask": mask.clone(), "soft": soft.clone()}
    n = cloud_paste(batch, 1.0, g, low=0.1, high=0.2, feather=0)
    assert n == 2  # chips 0 and 3 (no cloud) received chip 1's cloud
    for t in (0, 3):
        assert torch.equal(batch["mask"][t], mask[1])
        inside = mask[1, 0] > 0
        assert (batch["image"][t][:, inside] == 1.0).all() and (batch["image"][t][:, ~inside] == float(t)).all()
        assert torch.equal(batch["soft"][t], soft[1])
    for d in (1, 2):  # donors and the rest are untouched
        assert torch.equal(batch["image"][d], image[d]) and torch.equal(batch["mask"][d], mask[d])
    # p = 0 and a batch without a donor change nothing; a feathered seam blends only next to the pasted cloud
    again = {"image": image.clone(), "mask": mask.clone()}
    assert cloud_paste(again, 0.0, g) == 0 and torch.equal(again["image"], image)
    nodonor = {"image": image.clone(), "mask": torch.zeros_like(mask)}
    assert cloud_paste(nodonor, 1.0, g) == 0
    seam = {"image": image.clone(), "mask": mask.clone()}
    cloud_paste(seam, 1.0, g, low=0.1, high=0.2, feather=1)
    img = seam["image"][0, 0]  # chip 0 was all 0.0; the donor's cloud is 1.0 on rows/cols 4..11
    assert (img[5:11, 5:11] == 1.0).all() and (img[:2] == 0.0).all() and (img[14:] == 0.0).all()
    assert (img[3, 5:11] > 0).all() and (img[3, 5:11] < 1).all()  # blended just outside the pasted cloud
    assert (img[4, 5:11] > 0.5).all() and (img[4, 5:11] < 1).all()  # and along its edge


class _FirstStep(pl.Callback):
    """Records the first training step of a fit: the images the model was given and its logits, the batch as the
    step left it (the levers act on it in place before the loss) and the step's loss."""

    def on_train_start(self, trainer, module):
        self.seen = {}

        def hook(model, args, out):
            self.seen.setdefault("image", args[0].detach().clone())
            self.seen.setdefault("logits", out.detach().clone())

        self.handle = module.model.register_forward_hook(hook)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if "loss" not in self.seen:
            self.handle.remove()
            self.seen["loss"] = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
            self.seen["batch"] = {k: v.detach().clone() for k, v in batch.items() if torch.is_tensor(v)}


@pytest.fixture(scope="module")
def first_step(small_data, tmp_path_factory):
    """``first_step(**levers)``: the first step of a one-step fit of unet-xs on one batch of all 24 training chips
    (48 px crops) with those TrainConfig settings. One seed: the same initial weights and the same crops before the
    levers act, so two fits differ only by what their levers do."""
    root, seen = tmp_path_factory.mktemp("levers"), {}

    def get(**levers):
        key = repr(sorted(levers.items()))
        if key not in seen:
            cb = _FirstStep()
            fit(_cfg(small_data, root / f"run{len(seen)}", **{"epochs": 1, "limit_train_batches": 1,
                                                                "batch_size": 24, "crop": 48, **levers}),
                callbacks=[cb])
            seen[key] = cb.seen
        return seen[key]

    return get


def _bce_dice_reference(logits, target, band=0):
    """BCE + 1 - soft Dice over the batch (smooth 1), written out in float64 numpy; ``band`` > 0 leaves out of both
    every pixel with a pixel of the other label within ``band`` px (a (2 band + 1)-px square around it)."""
    from scipy.ndimage import maximum_filter, minimum_filter

    z, t = logits.double().numpy(), target.double().numpy()
    w = np.ones_like(t)
    if band:
        size = (1, 1, 2 * band + 1, 2 * band + 1)
        w = (maximum_filter(t, size, mode="nearest") == minimum_filter(t, size, mode="nearest")).astype(np.float64)
    bce = ((np.logaddexp(0.0, z) - t * z) * w).sum() / w.sum()
    p = w / (1.0 + np.exp(-z))
    dice = (2 * (p * t * w).sum() + 1) / (p.sum() + (t * w).sum() + 1)
    return bce + 1 - dice


def _pixel_kd_reference(zs, zt, t):
    """T^2 times the mean over pixels of KL(Bernoulli(sigmoid(zt / T)) || Bernoulli(sigmoid(zs / T))), float64."""
    ps, pt = 1 / (1 + np.exp(-zs.double().numpy() / t)), 1 / (1 + np.exp(-zt.double().numpy() / t))
    return t * t * np.mean(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))


def _soft_logits(soft):
    """The teacher logits of stored soft labels: the logit of the probability kept half a level (1/510) from 0/1."""
    p = np.clip(soft.double().numpy(), 1 / 510, 1 - 1 / 510)
    return torch.from_numpy(np.log(p / (1 - p)))


def test_cloud_paste_lever_pastes_batch_mates_clouds_before_the_loss(first_step):
    off, on = first_step(), first_step(cloud_paste=1.0)
    m0, m1 = off["batch"]["mask"], on["batch"]["mask"]
    grew = (m1 != m0).flatten(1).any(1)
    assert int(grew.sum()) >= 2 and (m1 >= m0).all()  # a pasted label is the union with the donor's cloud
    assert (m0[grew].flatten(1).mean(1) < 0.1).all()  # only low-cover chips receive a cloud
    assert torch.equal(on["image"][~grew], off["image"][~grew]) and not torch.equal(on["image"][grew],
                                                                                      off["image"][grew])
    for i in torch.nonzero(grew).flatten().tolist():  # each added cloud is the labelled cloud of a cloudy batch-mate
        added = m1[i] > m0[i]
        assert any(bool(m0[d][added].all()) and float(m0[d].mean()) > 0.3 for d in range(len(m0))), i
    assert on["loss"] == pytest.approx(_bce_dice_reference(on["logits"], m1), rel=1e-5)
    assert on["loss"] != pytest.approx(off["loss"], rel=1e-3)
    with pytest.raises(ValueError, match="cloud_paste"):
        first_step(cloud_paste=1.5)


def test_gain_lever_darkens_the_images_the_model_sees_not_the_labels(first_step):
    off, dark, mild = first_step(), first_step(gain=1.0), first_step(gain=1.0, gain_min=0.9)
    assert torch.equal(dark["batch"]["mask"], off["batch"]["mask"])
    assert torch.equal(mild["batch"]["mask"], off["batch"]["mask"])
    # normalisation is increasing in reflectance: darker chips have lower values everywhere, the darkest gain most
    assert (dark["image"] <= mild["image"] + 1e-5).all() and (mild["image"] <= off["image"] + 1e-5).all()
    assert dark["image"].mean() < mild["image"].mean() - 0.01 < off["image"].mean() - 0.02
    from cloudkd.data.normalise import MEAN, STD

    def refl(x):
        return x * torch.tensor(STD).view(4, 1, 1) + torch.tensor(MEAN).view(4, 1, 1)

    for img, low in ((dark["image"], 0.4), (mild["image"], 0.9)):  # one gain per chip, within [gain_min, 1]
        r0, r1 = refl(off["image"]), refl(img)
        for i in range(len(r0)):
            ok = (r0[i] > 0.05) & (r0[i] < 0.9)  # away from nodata and the clip
            gains = r1[i][ok] / r0[i][ok]
            assert low - 1e-3 <= float(gains.min()) and float(gains.max()) <= 1 + 1e-3
            assert float(gains.max() - gains.min()) < 1e-3
    assert dark["loss"] == pytest.approx(_bce_dice_reference(dark["logits"], off["batch"]["mask"]), rel=1e-5)


def test_boundary_ignore_lever_leaves_label_outlines_out_of_the_loss(first_step):
    off, on = first_step(), first_step(boundary_ignore=2)
    assert torch.equal(on["image"], off["image"]) and torch.equal(on["logits"], off["logits"])
    mask = off["batch"]["mask"]
    assert off["loss"] == pytest.approx(_bce_dice_reference(off["logits"], mask), rel=1e-5)
    assert on["loss"] == pytest.approx(_bce_dice_reference(on["logits"], mask, band=2), rel=1e-5)
    assert abs(on["loss"] - off["loss"]) > 1e-3


def test_label_weight_lever_scales_the_loss_on_labels(first_step):
    off, on = first_step(), first_step(label_weight=3.0)
    assert torch.equal(on["logits"], off["logits"])
    assert on["loss"] == pytest.approx(3.0 * off["loss"], rel=1e-6)


@pytest.mark.parametrize("kd,temperature,weight", [("pixel", 2.0, 1.0), ("pixel", 1.0, 0.5), ("cwd", 4.0, 1.0)])
def test_kd_levers_add_the_chosen_distillation_loss(first_step, smoothed_soft, kd, temperature, weight):
    """Offline soft labels: the step's loss is the loss on labels plus ``kd_weight`` times the chosen KD loss at
    the chosen temperature between the student's logits and the soft labels' logits, each computed here."""
    base = first_step(soft_dir=str(smoothed_soft))
    on = first_step(soft_dir=str(smoothed_soft), kd_weight=weight, kd=kd, temperature=temperature)
    assert torch.equal(on["logits"], base["logits"]) and torch.equal(on["batch"]["soft"], base["batch"]["soft"])
    zs, zt = on["logits"], _soft_logits(on["batch"]["soft"])
    assert base["loss"] == pytest.approx(_bce_dice_reference(zs, base["batch"]["mask"]), rel=1e-5)
    want = _pixel_kd_reference(zs, zt, temperature) if kd == "pixel" else \
        _cwd_reference(zs.double().numpy(), zt.numpy(), temperature)[0]
    assert want > 1e-3
    assert on["loss"] - base["loss"] == pytest.approx(weight * want, rel=1e-4)


@pytest.fixture(scope="module")
def pool_soft(small_data, smoothed_soft, tmp_path_factory):
    """Soft labels of the training chips and of the test chips (an unlabelled pool): the labels, smoothed."""
    import shutil

    soft = shutil.copytree(smoothed_soft, tmp_path_factory.mktemp("pool") / "soft")
    test = resolve_split(small_data, "test")
    for cid in test.chip_ids():
        write_soft(soft / f"{cid}.tif", np.clip(read_label(test.label_path(cid)).astype(np.float32) * 0.8 + 0.1, 0, 1))
    return soft


def test_kd_on_unlabelled_lever_keeps_the_teacher_off_the_labelled_chips(first_step, small_data, pool_soft):
    """Labels and an unlabelled pool in one batch of all 34 chips: the loss on labels covers the labelled chips,
    the pixel KD loss all of them (kd_on all) or the unlabelled ones only (kd_on unlabelled)."""
    common = dict(soft_dir=str(pool_soft), unlabelled=str(resolve_split(small_data, "test").features_dir),
                  kd_weight=1.0, batch_size=34)
    every, unl = first_step(**common), first_step(**common, kd_on="unlabelled")
    assert torch.equal(every["logits"], unl["logits"])
    b, zs = every["batch"], every["logits"]
    lab = b["labelled"].reshape(-1) > 0.5
    assert int(lab.sum()) == 24 and int((~lab).sum()) == 10
    hard = _bce_dice_reference(zs[lab], b["mask"][lab])
    zt = _soft_logits(b["soft"])
    assert every["loss"] == pytest.approx(hard + _pixel_kd_reference(zs, zt, 2.0), rel=1e-5)
    assert unl["loss"] == pytest.approx(hard + _pixel_kd_reference(zs[~lab], zt[~lab], 2.0), rel=1e-5)
    assert abs(unl["loss"] - every["loss"]) > 1e-4


# ---------------------------------------------------------------------------------------------------- augmentation
def test_augmentation_keeps_image_label_and_soft_aligned():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    field = np.sin(xx / 9.0) + np.cos(yy / 13.0) + 0.3 * np.sin((xx + 2 * yy) / 5.0)
    image = np.stack([field, -field, field * 0.5, rng.normal(0, 1, field.shape).astype(np.float32)])
    mask = (field > 0.2).astype(np.float32)[None]
    soft = (1 / (1 + np.exp(-3 * field))).astype(np.float32)[None]
    for seed in range(20):
        aug = Augment(crop=64, affine_p=1.0 if seed % 2 else 0.0, seed=seed)
        out = aug({"image": image.copy(), "mask": mask.copy(), "soft": soft.copy()})
        f = out["image"][0]
        assert out["image"].shape == (4, 64, 64) and out["mask"].shape == (1, 64, 64) and out["soft"].shape == (1, 64, 64)
        assert set(np.unique(out["mask"])) <= {0.0, 1.0}
        away = np.abs(f - 0.2) > 0.1  # away from the label's edge, where interpolation may differ
        assert (out["mask"][0][away] == (f[away] > 0.2)).mean() > 0.99
        np.testing.assert_allclose(out["soft"][0], 1 / (1 + np.exp(-3 * f)), atol=0.03)
        np.testing.assert_allclose(out["image"][1], -f, atol=1e-5)  # bands move together


class _Coords(torch.utils.data.Dataset):
    """Chips whose bands hold their own pixel coordinates: an augmented sample shows where its crop came from
    and how it was turned."""

    def __init__(self, n, seed=None):
        self.n, self.transform = n, Augment(crop=16, affine_p=0.0, seed=seed)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
        out = self.transform({"image": np.stack([yy, xx, yy, xx]), "mask": np.zeros((1, 48, 48), np.float32)})
        return torch.from_numpy(out["image"][:2].copy())


def _placement(sample):
    """(origin, step along output rows, step along output columns) of an augmented coordinate chip."""
    s = sample.numpy() if hasattr(sample, "numpy") else sample
    return tuple(s[:, 0, 0]) + tuple(s[:, 1, 0] - s[:, 0, 0]) + tuple(s[:, 0, 1] - s[:, 0, 0])


def test_augmentation_is_seeded_with_independent_decisions_and_distinct_workers():
    from cloudkd.data.augment import seed_worker

    seq = lambda ds: [_placement(ds[i]) for i in range(len(ds))]  # noqa: E731
    assert seq(_Coords(40, seed=5)) == seq(_Coords(40, seed=5))
    assert seq(_Coords(40, seed=5)) != seq(_Coords(40, seed=6))
    # flips and rotations drawn independently: all 8 orientations of the square appear (one generator per
    # transform, all of the same seed, would flip horizontally and vertically together: 4 orientations)
    turns = {p[2:] for p in seq(_Coords(64, seed=0))}
    assert len(turns) == 8, turns

    def loader_run():
        torch.manual_seed(0)  # what seed_everything does for the main process
        dl = torch.utils.data.DataLoader(_Coords(8, seed=0), batch_size=1, num_workers=2, worker_init_fn=seed_worker)
        return [_placement(b[0]) for b in dl]

    first = loader_run()
    assert first == loader_run()  # a seeded run repeats
    assert first[0::2] != first[1::2]  # worker 0 (samples 0, 2, ...) does not repeat worker 1 (1, 3, ...)


def test_datamodule_augmentation_follows_the_seed(small_data):
    from cloudkd.data.datamodule import CloudDataModule

    def first_crops(seed):
        dm = CloudDataModule(small_data, crop=48, seed=seed)
        dm.setup()
        return [dm.train_set[i]["image"].numpy() for i in range(3)]

    a, b, c = first_crops(3), first_crops(3), first_crops(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------------------------------------------- training
def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="unet-xs", epochs=3, batch_size=4, crop=64, lr=5e-3,
                accelerator="cpu", progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _rule_jaccard(model, val):
    """Global Jaccard of ``model`` on the chips of ``val`` (whole chips), from scratch by the one prediction rule
    (threshold 0.5, nodata pixels of the reflectance clear)."""
    from cloudkd.common.infer import nodata_mask, predict_masks
    from cloudkd.common.metrics import Confusion, confusion
    from cloudkd.data import read_label

    m = Confusion()
    for f, lab in zip(val.features, val.label):
        refl = read_chip(f)
        m += confusion(predict_masks(model, torch.from_numpy(normalise(refl)[None]), nodata_mask(refl)[None])[0],
                       read_label(lab))
    return m.jaccard()


def _val_jaccard(run_dir, data, val_fold=0):
    """Global Jaccard of a saved student on the validation fold (whole chips), from scratch."""
    from cloudkd.data.folds import make_folds, split_by_fold

    idx = load_index(resolve_split(data))
    return _rule_jaccard(load_student(run_dir), split_by_fold(idx, make_folds(idx, 5, 0), val_fold)[1])


def test_short_fit_improves_validation_jaccard(small_data, tmp_path):
    # unet-s on whole 96x96 chips: the 4-channel-wide unet-xs needs far more steps than a test can afford
    before = fit(_cfg(small_data, tmp_path / "r0", model="unet-s", epochs=1, limit_train_batches=1, lr=1e-9))
    after = fit(_cfg(small_data, tmp_path / "r1", model="unet-s", epochs=12, crop=96))
    assert after.val_jaccard > before.val_jaccard + 0.05, (before.val_jaccard, after.val_jaccard)
    assert _val_jaccard(tmp_path / "r1", small_data) == pytest.approx(after.val_jaccard, abs=1e-6)
    info = json.loads((tmp_path / "r1" / "student.json").read_text())
    assert info["model"] == "unet-s" and info["params"] == list_presets()["unet-s"]
    metrics = pd.read_csv(next((tmp_path / "r1" / "logs").rglob("metrics.csv")))
    assert metrics["val_jaccard"].dropna().max() == pytest.approx(after.val_jaccard, abs=1e-6)
    assert (tmp_path / "r1" / "checkpoints" / "best.ckpt").is_file()
    assert list((tmp_path / "r1" / "tensorboard").rglob("events.out.tfevents.*"))  # TensorBoard logs too


def test_resume_continues_from_last_checkpoint(small_data, tmp_path):
    fit(_cfg(small_data, tmp_path / "r", epochs=1, limit_train_batches=2))
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    r = fit(_cfg(small_data, tmp_path / "r", epochs=3, limit_train_batches=2, resume=True))
    assert r.epochs == 3
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert ck["global_step"] == 6  # 3 epochs x 2 steps in all
    logs = sorted((tmp_path / "r" / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    resumed = pd.read_csv(logs[-1])
    assert set(resumed["epoch"].dropna()) == {1, 2}  # the resumed run trained epochs 1 and 2 only, not 0 again
    # the added epochs follow the longer run's cosine schedule (lr 5e-3), not the old one, which ended at 0
    lr = resumed.dropna(subset=["lr"]).set_index("step")["lr"]  # LearningRateMonitor: at each epoch's first step
    for e in (1, 2):
        assert lr[2 * e] == pytest.approx(5e-3 * 0.5 * (1 + math.cos(math.pi * e / 3)), rel=1e-6)
    moved = max((ck["state_dict"][k].float() - v.float()).abs().max().item() for k, v in before.items())
    assert moved > 1e-4  # and the weights did change


@pytest.fixture(scope="module")
def smoothed_soft(small_data, tmp_path_factory):
    """Soft labels from a stand-in teacher: the labels, smoothed (what a good teacher's probabilities look like)."""
    from scipy.ndimage import gaussian_filter
    from cloudkd.data import read_label

    soft = tmp_path_factory.mktemp("soft")
    split = resolve_split(small_data)
    for cid in split.chip_ids():
        write_soft(soft / f"{cid}.tif",
                   np.clip(gaussian_filter(read_label(split.label_path(cid)).astype(np.float32), 1.5), 0, 1))
    return soft


def test_offline_distillation_from_soft_labels(small_data, smoothed_soft, tmp_path):
    r = fit(_cfg(small_data, tmp_path / "kd", model="unet-s", kd_weight=1.0, soft_dir=str(smoothed_soft),
                 epochs=6, crop=96))
    assert r.val_jaccard > 0.5
    metrics = pd.read_csv(next((tmp_path / "kd" / "logs").rglob("metrics.csv")))
    assert metrics["train_kd"].dropna().iloc[-1] < metrics["train_kd"].dropna().iloc[0]
    assert json.loads((tmp_path / "kd" / "student.json").read_text())["teacher_mode"] == "offline"

    from cloudkd.data.folds import make_folds, split_by_fold
    import shutil

    soft = shutil.copytree(smoothed_soft, tmp_path / "soft")
    idx = load_index(resolve_split(small_data))
    train_ids = split_by_fold(idx, make_folds(idx, 5, 0), 0)[0]["chip_id"]
    (soft / f"{train_ids.iloc[0]}.tif").unlink()
    with pytest.raises(Exception, match="no soft label for 1 chip"):
        fit(_cfg(small_data, tmp_path / "kd2", kd_weight=1.0, soft_dir=str(soft)))


def test_offline_distillation_on_unlabelled_chips(small_data, smoothed_soft, tmp_path):
    """--soft DIR --unlabelled DIR2 --label-weight 0: the one soft-label folder covers the labelled training chips
    and the unlabelled ones; every sample, whichever folder it comes from, carries its own soft label, batches
    mixing both collate, and a missing soft label of an unlabelled chip is named before training."""
    import shutil

    from cloudkd.data.datamodule import CloudDataModule
    from cloudkd.data.soft import read_soft

    soft = shutil.copytree(smoothed_soft, tmp_path / "soft")
    test = resolve_split(small_data, "test")
    rng = np.random.default_rng(0)
    for cid in test.chip_ids():  # the unlabelled chips' soft labels: anything distinct from their labels
        write_soft(soft / f"{cid}.tif", rng.random((96, 96)))
    dm = CloudDataModule(small_data, soft_dir=soft, unlabelled=test.features_dir, with_labels=False, augment=False)
    dm.setup()
    ids = [dm.train_set[i]["chip_id"] for i in range(len(dm.train_set))]
    assert set(test.chip_ids()) <= set(ids) and len(ids) == len(dm.train_index) + len(test.chip_ids())
    for i in (0, len(ids) - 1):  # a labelled chip and an unlabelled one: their own soft labels, no mask
        sample = dm.train_set[i]
        assert "mask" not in sample and sample["image"].shape == (4, 96, 96)
        np.testing.assert_array_equal(sample["soft"][0].numpy(), read_soft(soft / f"{sample['chip_id']}.tif"))
    r = runner.invoke(app, ["distill", str(small_data), "--out", str(tmp_path / "run"), "--soft", str(soft),
                            "--unlabelled", str(test.features_dir), "--label-weight", "0", "--model", "unet-xs",
                            "--epochs", "1", "--batch", "40", "--crop", "64", "--accelerator", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    info = json.loads((tmp_path / "run" / "student.json").read_text())
    assert info["teacher_mode"] == "offline" and info["config"]["unlabelled"] == str(test.features_dir)
    metrics = pd.read_csv(next((tmp_path / "run" / "logs").rglob("metrics.csv")))
    assert np.isfinite(metrics["train_kd"].dropna()).all() and "train_hard" not in metrics
    (soft / f"{test.chip_ids()[3]}.tif").unlink()
    with pytest.raises(Exception, match=f"no soft label for 1 chip.*{test.chip_ids()[3]}"):
        CloudDataModule(small_data, soft_dir=soft, unlabelled=test.features_dir, with_labels=False).setup()


def test_labels_and_an_unlabelled_pool_mix_the_labels_loss_skips_the_unlabelled_chips(small_data, tmp_path):
    """--unlabelled with labels (label weight > 0): every sample carries ``labelled``; the unlabelled ones a
    placeholder mask that the loss on labels leaves out (changing it changes nothing, changing a labelled one
    does), the KD loss covers all; a run mixing both trains from the CLI and records the pool."""
    from cloudkd.data.datamodule import CloudDataModule
    from cloudkd.student.distill import LossConfig, bce_dice

    test = resolve_split(small_data, "test")
    dm = CloudDataModule(small_data, unlabelled=test.features_dir, with_labels=True, augment=False)
    dm.setup()
    n_lab = len(dm.train_index)
    flags = [float(dm.train_set[i]["labelled"]) for i in range(len(dm.train_set))]
    assert flags == [1.0] * n_lab + [0.0] * len(test.chip_ids())
    unl = dm.train_set[len(dm.train_set) - 1]
    assert unl["chip_id"] in test.chip_ids() and not unl["mask"].any()
    lab = dm.train_set[0]
    np.testing.assert_array_equal(lab["mask"][0].numpy(), read_label(resolve_split(small_data).labels_dir /
                                                                    f"{lab['chip_id']}.tif") > 0)
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(4, 1, 16, 16, generator=g), torch.randn(4, 1, 16, 16, generator=g)
    target = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    labelled = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    loss = LossConfig(label_weight=1.0, kd_weight=1.0, kd="pixel")
    parts = loss(logits, target, teacher, labelled)
    assert torch.isclose(parts["hard"], bce_dice(logits[[0, 2]], target[[0, 2]]))
    other = target.clone()
    other[1] = 1 - other[1]
    assert torch.equal(loss(logits, other, teacher, labelled)["hard"], parts["hard"])
    other[0] = 1 - other[0]
    assert not torch.isclose(loss(logits, other, teacher, labelled)["hard"], parts["hard"])
    none = loss(logits, target, teacher, torch.zeros(4, 1))
    assert none["hard"].item() == 0.0 and torch.isclose(none["loss"], none["kd"])
    assert not torch.isclose(loss(logits, target, teacher)["hard"], parts["hard"])  # all four without the flags
    fit(_cfg(small_data, tmp_path / "t", model="unet-xs", epochs=1, crop=64))
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(load_student(tmp_path / "t"), onnx_path, dynamic=True, size=64)
    r = runner.invoke(app, ["distill", str(small_data), "--out", str(tmp_path / "run"), "--teacher-onnx",
                            str(onnx_path), "--unlabelled", str(test.features_dir), "--model", "unet-xs",
                            "--epochs", "1", "--batch", "40", "--crop", "64", "--accelerator", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    info = json.loads((tmp_path / "run" / "student.json").read_text())
    assert info["config"]["unlabelled"] == str(test.features_dir) and info["config"]["label_weight"] > 0
    metrics = pd.read_csv(next((tmp_path / "run" / "logs").rglob("metrics.csv")))
    assert np.isfinite(metrics["train_kd"].dropna()).all() and np.isfinite(metrics["train_hard"].dropna()).all()


def test_an_unfinished_unlabelled_pool_is_refused_before_the_run_folder_is_touched(small_data, tmp_path):
    """A pool whose generation did not finish (its marker still there) fails at the chip tables, before the run
    folder exists (it used to fail inside the trainer and leave a claimed folder with logs behind)."""
    from cloudkd.data import DataError
    from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

    pool = tmp_path / "pool"
    synthesize(pool, SynthConfig(n_train=2, n_test=0, size=96, seed=3, n_unlabelled=3), workers=1, progress=False)
    (pool / "generation.unfinished").write_text("{}")
    with pytest.raises(DataError, match="generation did not finish"):
        fit(_cfg(small_data, tmp_path / "run", kd_weight=0.0, unlabelled=str(pool), epochs=1))
    assert not (tmp_path / "run").exists()


def test_cli_distill_then_predict_writes_one_valid_mask_per_chip(small_data, smoothed_soft, tmp_path):
    r = runner.invoke(app, ["distill", str(small_data), "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "needs a teacher" in r.output
    r = runner.invoke(app, ["distill", str(small_data), "--out", str(tmp_path / "run"), "--soft", str(smoothed_soft),
                            "--model", "unet-xs", "--epochs", "1", "--steps", "2", "--crop", "64",
                            "--accelerator", "cpu", "--kd", "cwd", "--temperature", "4"])
    assert r.exit_code == 0, r.output
    assert "unet-xs: 75,893 params" in r.output
    cfg = json.loads((tmp_path / "run" / "student.json").read_text())["config"]
    assert cfg["kd"] == "cwd" and cfg["temperature"] == 4.0 and cfg["kd_weight"] == 1.0
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--features", str(small_data / "test_features"),
                            "--out", str(tmp_path / "masks"), "--tta"])
    assert r.exit_code == 0, r.output
    test = resolve_split(small_data, "test")
    masks = sorted(p.stem for p in (tmp_path / "masks").iterdir() if not p.name.startswith("."))  # + its record
    assert masks == sorted(test.chip_ids())
    for cid in masks:
        m = tifffile.imread(tmp_path / "masks" / f"{cid}.tif")
        assert m.shape == (96, 96) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


def test_online_distillation_from_an_onnx_teacher_on_unlabelled_chips(small_data, tmp_path):
    """A trained model exported to ONNX teaches a fresh student on unlabelled chips (label weight 0)."""
    fit(_cfg(small_data, tmp_path / "t", model="unet-s", epochs=12, crop=96))
    teacher = load_student(tmp_path / "t")
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(teacher, onnx_path, dynamic=True, size=64)
    r = fit(_cfg(small_data, tmp_path / "s", model="unet-s", label_weight=0.0, kd_weight=1.0,
                 teacher_onnx=str(onnx_path), unlabelled=str(small_data / "test_features"), epochs=10, crop=96))
    student = load_student(tmp_path / "s")
    split = resolve_split(small_data, "test")
    x = torch.from_numpy(np.stack([normalise(read_chip(split.chip_dir(c))) for c in split.chip_ids()]))
    with torch.no_grad():
        agree = ((student(x) > 0) == (teacher(x) > 0)).float().mean().item()
        fresh = build_model("unet-s").eval()
        base = ((fresh(x) > 0) == (teacher(x) > 0)).float().mean().item()
    assert agree > 0.8 and agree > base + 0.1, (agree, base)
    assert r.val_jaccard is not None


def _odd_validation_folds(data, path):
    """A folds CSV whose fold 1 is whole locations holding an odd number (>= 5) of chips (a padding sampler
    would count one twice); the rest is fold 0."""
    idx = load_index(resolve_split(data))
    val_locs, n = [], 0
    for loc, count in idx.groupby("location").size().items():
        val_locs.append(loc)
        n += count
        if n >= 5 and n % 2:
            break
    assert n % 2 == 1
    folds = pd.DataFrame({"chip_id": idx["chip_id"], "location": idx["location"],
                          "fold": [1 if loc in val_locs else 0 for loc in idx["location"]]})
    folds.to_csv(path, index=False)
    return idx, folds


def test_ddp_shards_cover_every_chip_and_keep_step_counts_equal(small_data, tmp_path):
    """What each of two ranks loads: validation shards disjoint and together every validation chip exactly once
    (an odd count, so padding would show); training shards of equal length (DDP ranks must take the same
    number of steps) that together cover every training chip, reshuffled each epoch."""
    from types import SimpleNamespace

    from cloudkd.data.datamodule import CloudDataModule

    _, folds = _odd_validation_folds(small_data, tmp_path / "folds.csv")
    val_ids, train_ids = set(folds.chip_id[folds.fold == 1]), set(folds.chip_id[folds.fold == 0])

    def shards(split, world, epoch=0):
        out = []
        for rank in range(world):
            dm = CloudDataModule(small_data, folds=tmp_path / "folds.csv", val_fold=1, batch_size=4, crop=32)
            dm.setup()
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
            loader, ds = (dm.train_dataloader(), dm.train_set) if split == "train" else (dm.val_dataloader(),
                                                                                         dm.val_set)
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            out.append([ds.index["chip_id"][i] for i in loader.sampler])
        return out

    val = shards("val", 2)
    assert sorted(val[0] + val[1]) == sorted(val_ids) and not set(val[0]) & set(val[1])
    assert sorted(shards("val", 1)[0]) == sorted(val_ids)
    train0 = shards("train", 2)
    assert len(train0[0]) == len(train0[1]) and set(train0[0]) | set(train0[1]) == train_ids
    assert len(train0[0] + train0[1]) - len(train_ids) <= 1  # at most one chip repeated to even the shards out
    train1 = shards("train", 2, epoch=1)
    assert train1 != train0 and set(train1[0]) | set(train1[1]) == train_ids


def test_ddp_on_two_cpu_processes_agrees_and_validates_exactly(small_data, tmp_path):
    """Two gloo processes: same weights on both ranks, and the validation Jaccard equals the single-process
    leaderboard metric of the final weights on the whole validation fold (an odd number of chips: a padding
    sampler would count one twice)."""
    from cloudkd.data.folds import split_by_fold
    from cloudkd.student.runs import lightning_state

    folds_csv = tmp_path / "folds.csv"
    idx, folds = _odd_validation_folds(small_data, folds_csv)
    exe = str(Path(sys.executable).with_name("cloudkd"))
    out = tmp_path / "ddp"
    env = {**os.environ, "PL_DISABLE_FORK": "1"}
    p = subprocess.run([exe, "train", str(small_data), "--out", str(out), "--model", "unet-xs", "--epochs", "2",
                        "--steps", "2", "--batch", "2", "--crop", "64", "--accelerator", "cpu", "--devices", "2",
                        "--strategy", "ddp", "--folds", str(folds_csv), "--val-fold", "1"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["val_jaccard"] == ranks[1]["val_jaccard"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (out / "student.pt").is_file()

    model = build_model("unet-xs")
    model.load_state_dict(lightning_state(out / "checkpoints" / "last.ckpt"))
    model.eval()
    expect = _rule_jaccard(model, split_by_fold(idx, folds, 1)[1])
    assert ranks[0]["val_jaccard"] == pytest.approx(expect, abs=1e-6)  # logged as float32


@pytest.mark.parametrize("preset,stem,inner_hw", [("unet-s2d2", 2, 256), ("unet-s2d4", 4, 128),
                                                   ("unet-s2d2r", 2, 256)])
def test_space_to_depth_presets_run_at_a_fraction_of_the_resolution_and_export_exactly(preset, stem, inner_hw):
    """The on-board candidates: a 512x512 chip is folded to 4*stem^2 channels at 512/stem, the deepest stage runs
    at 512/stem/2^(depth-1), the logits come back at 512x512, and the fp32 ONNX export gives PyTorch's logits to
    float rounding on a 512x512 chip."""
    from cloudkd.common.onnx import ort_logits, ort_session
    from cloudkd.onboard.export import count_macs, export_onnx

    torch.manual_seed(1)
    m = build_model(preset).eval()
    seen = []
    hooks = [s.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape[1:]))) for s in m.encoder]
    x = torch.randn(1, 4, 512, 512)
    with torch.no_grad():
        got = m(x)
    for h in hooks:
        h.remove()
    widths = PRESETS[preset]["widths"]
    assert seen == [(w, inner_hw >> i, inner_hw >> i) for i, w in enumerate(widths)]
    assert m.encoder[0][0][0].in_channels == 4 * stem * stem and got.shape == (1, 1, 512, 512)
    # at most three quarters of unet-s's multiply-accumulates (2.09 G) at the same parameter bound
    assert count_macs(m, 512) < 0.75 * count_macs(build_model("unet-s"), 512)
    path = export_onnx(m, Path(tempfile.mkdtemp()) / f"{preset}.onnx", size=512)
    assert np.abs(ort_logits(ort_session(path), x.numpy()) - got.numpy()).max() < 1e-3


def test_space_to_depth_stem_is_the_same_unet_on_folded_input_with_upsampled_logits():
    """stem=2: PixelUnshuffle folds 4 bands into 16 channels at half resolution, the U-Net runs there, and its
    logits are upsampled bilinearly; the same weights in a stem-less U-Net on the folded input give the same
    logits before upsampling. The config rebuilds it (pack / main.py), and it exports to ONNX exactly."""
    import torch.nn.functional as F

    from cloudkd.common.onnx import ort_logits, ort_session
    from cloudkd.onboard.export import count_macs, export_onnx
    from cloudkd.student.unet import CompactUNet

    torch.manual_seed(0)
    m = CompactUNet(widths=(8, 16, 24), stem=2).eval()
    inner = CompactUNet(in_channels=16, widths=(8, 16, 24)).eval()
    inner.load_state_dict(m.state_dict())  # the stem has no weights of its own
    x = torch.randn(2, 4, 64, 48)
    folded = torch.stack([x[:, :, i::2, j::2] for i in range(2) for j in range(2)], dim=2).reshape(2, 16, 32, 24)
    with torch.no_grad():
        want = F.interpolate(inner(folded), size=(64, 48), mode="bilinear", align_corners=False)
        got = m(x)
    assert got.shape == (2, 1, 64, 48)
    assert torch.allclose(got, want, atol=1e-6)
    assert count_macs(m, 512) == count_macs(inner, 256, in_channels=16) and count_params(m) == count_params(inner)
    assert m.config["stem"] == 2 and "stem" not in CompactUNet().config  # old configs unchanged
    again = CompactUNet(**m.config)
    again.load_state_dict(m.state_dict())
    path = export_onnx(m, Path(tempfile.mkdtemp()) / "s2d.onnx", size=64)
    onnx_out = ort_logits(ort_session(path), x.numpy())
    assert np.abs(onnx_out - got.numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="stem"):
        CompactUNet(stem=3)


def test_refine_head_adds_a_full_resolution_correction_to_the_upsampled_logits():
    """refine=C: logits = upsample(U-Net logits) + conv1x1(relu(conv3x3([bands, upsampled logits]))); with the
    head's last conv zeroed it is the stem-only model, and the config rebuilds it."""
    import torch.nn.functional as F

    from cloudkd.student.unet import CompactUNet

    torch.manual_seed(0)
    m = CompactUNet(widths=(8, 16), stem=2, refine=4).eval()
    plain = CompactUNet(widths=(8, 16), stem=2).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("refine.")})
    x = torch.randn(2, 4, 40, 24)
    with torch.no_grad():
        up = plain(x)
        r = m.refine
        want = up + r[2](F.relu(r[0](torch.cat([x, up], 1))))
        assert torch.allclose(m(x), want, atol=1e-5)
        assert not torch.allclose(m(x), up, atol=1e-3)  # the head does something
        r[2].weight.zero_()
        r[2].bias.zero_()
        assert torch.allclose(m(x), up, atol=1e-6)
    assert m.config["refine"] == 4 and "refine" not in plain.config
    again = CompactUNet(**m.config)
    again.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="refine needs"):
        CompactUNet(refine=4)
