"""The nnU-Net teacher end to end on tiny generated data: prepare, plan, train (CPU budget), predict, resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from cloudkd.cli import app
from cloudkd.common.infer import nodata_mask
from cloudkd.data import DataError, normalise, read_chip, read_label, resolve_split
from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize
from cloudkd.evaluate.scoring import score_folder
from cloudkd.teacher.model import NnUNetTeacher
from cloudkd.teacher.plans import Budget, describe_plan, plan_and_preprocess, NNUNET_2D_PARAMS
from cloudkd.teacher.workspace import Workspace
from cloudkd.teacher.convert import prepare
from cloudkd.data.soft import read_soft

from conftest import make_dataset

runner = CliRunner()
#: small enough for CI (about a minute of training on 2 cores), large enough to learn clouds
BUDGET = ["--epochs", "8", "--iters", "50", "--val-iters", "2", "--patch", "96", "--batch", "4",
          "--base-features", "16", "--max-features", "128"]


def cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """A teacher prepared, planned, trained (fold 0) and run on the held-out test split through the CLI."""
    work = tmp_path_factory.mktemp("teacher")
    ws = work / "ws"
    cli("folds", small_data, "--out", work / "folds.csv", "--k", 3)
    r = cli("teacher", "prepare", small_data, "--workdir", ws, "--folds", work / "folds.csv")
    assert "30 chips of 96x96 prepared" in r.output
    import matplotlib

    style = (matplotlib.rcParams["font.size"], matplotlib.rcParams["axes.facecolor"])
    r = cli("teacher", "train", "--workdir", ws, "--fold", 0, "--device", "cpu", *BUDGET)
    assert "fold 0: trained" in r.output and "8 epochs" in r.output
    # nnU-Net's progress plot themes the whole process (seaborn, font scale 2.5); the workspace puts the look back
    assert (matplotlib.rcParams["font.size"], matplotlib.rcParams["axes.facecolor"]) == style
    r = cli("teacher", "predict", "--workdir", ws, "--features", small_data / "test_features",
            "--masks-out", work / "masks", "--soft-out", work / "soft", "--device", "cpu")
    assert "10 chips" in r.output
    return {"work": work, "ws": Workspace(ws), "data": small_data}


def test_prepare_writes_nnunet_layout_and_location_splits(trained):
    ws, data = trained["ws"], trained["data"]
    raw = ws.raw / "Dataset501_OnCloudN"
    dj = json.loads((raw / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "B02", "1": "B03", "2": "B04", "3": "B08"}
    assert dj["labels"] == {"background": 0, "cloud": 1} and dj["file_ending"] == ".tif"
    assert dj["numTraining"] == 30
    cid = resolve_split(data).chip_ids()[0]
    for c in range(4):  # the project's normalised inputs, exactly
        img = tifffile.imread(raw / "imagesTr" / f"{cid}_{c:04d}.tif")
        np.testing.assert_allclose(img, normalise(read_chip(data / "train_features" / cid))[c], rtol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(raw / "labelsTr" / f"{cid}.tif"),
                                  read_label(data / "train_labels" / f"{cid}.tif"))
    splits = json.loads((ws.preprocessed / "Dataset501_OnCloudN" / "splits_final.json").read_text())
    import pandas as pd

    folds = pd.read_csv(trained["work"] / "folds.csv").set_index("chip_id")
    assert len(splits) == 3
    for k, s in enumerate(splits):
        assert set(folds.loc[s["val"], "fold"]) == {k}
        assert not set(folds.loc[s["train"], "location"]) & set(folds.loc[s["val"], "location"])
        assert len(s["train"]) + len(s["val"]) == 30
    plans = json.loads((ws.preprocessed / "Dataset501_OnCloudN" / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["normalization_schemes"] == ["NoNormalization"] * 4


def test_prepare_is_idempotent_and_refuses_a_different_dataset(trained, tmp_path):
    ws, data = trained["ws"], trained["data"]
    import pandas as pd

    folds = pd.read_csv(trained["work"] / "folds.csv", dtype={"chip_id": str})
    assert prepare(data, ws, folds=folds, progress=False).reused
    other = make_dataset(tmp_path / "other", {f"c{i}": np.full((4, 32, 32), 900 * (i + 1), np.uint16)
                                              for i in range(4)},
                         labels={f"c{i}": np.eye(32, dtype=np.uint8) for i in range(4)},
                         locations={"c0": "A", "c1": "B", "c2": "C", "c3": "D"})
    with pytest.raises(DataError, match="already holds a different dataset"):
        prepare(other, ws, k=2, progress=False)
    with pytest.raises(DataError, match="already used by .*Dataset501_OnCloudN"):
        prepare(other, ws, name="Other", k=2, progress=False)


def test_teacher_probabilities_are_valid_and_beat_chance(trained):
    work, data = trained["work"], trained["data"]
    test = resolve_split(data, "test")
    ids = test.chip_ids()
    rep = score_folder(work / "masks", test.labels_dir)
    assert rep.ok and rep.n_chips == len(ids)
    fracs, agree, nodata_pixels = [], [], []
    for cid in ids:
        p = read_soft(work / "soft" / f"{cid}.tif")
        m = read_label(work / "masks" / f"{cid}.tif")
        assert p.shape == (96, 96) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
        # masks follow the prediction rule: probability > 0.5, nodata pixels clear (the soft labels keep the
        # probability there); pixels within the soft labels' quantisation step of 0.5 are left out
        rule = (p > 0.5) & ~nodata_mask(read_chip(test.chip_dir(cid)))
        clear = np.abs(p - 0.5) > 1 / 255
        agree.append((m[clear] == rule[clear]).mean())
        nodata_pixels.append(int(nodata_mask(read_chip(test.chip_dir(cid))).sum()))
        fracs.append(read_label(test.label_path(cid)).mean())
        assert (work / "soft" / f"{cid}.tif").stat().st_size <= 96 * 96 + 1024
    assert min(agree) == 1.0
    assert sum(nodata_pixels) > 0  # these chips do have nodata, so the rule's nodata part is exercised
    all_cloud = float(np.mean(fracs))  # Jaccard of calling every pixel cloud
    assert rep.jaccard > all_cloud + 0.05, (rep.jaccard, all_cloud)


def test_in_process_teacher_agrees_with_teacher_predict(trained):
    work, data, ws = trained["work"], trained["data"], trained["ws"]
    teacher = NnUNetTeacher.from_workspace(ws)
    assert teacher.folds == (0,)
    test = resolve_split(data, "test")
    ids = test.chip_ids()[:4]
    x = torch.from_numpy(np.stack([normalise(read_chip(test.chip_dir(c))) for c in ids]))
    logits = teacher.logits(x)
    assert logits.shape == (4, 1, 96, 96) and logits.dtype == torch.float32
    prob = torch.sigmoid(logits)[:, 0].numpy()
    direct = np.stack([teacher.predict_chip(read_chip(test.chip_dir(c)))[0] for c in ids])
    # nnU-Net's own path (teacher predict, predict_chip) accumulates Gaussian-weighted logits in float16, and
    # its Gaussian (sigma = patch / 8, peak 10) falls below float16's smallest normal number, 2^-14, in the
    # patch corners (4 % of the pixels): there each channel's weighted logit is rounded to float16's subnormal
    # step 2^-24 (error <= 2^-25 = 3.0e-8) and divided by a weight down to 1.1e-6, so the cloud logit
    # z_cloud - z_background moves by up to 2 x 0.0265 and the probability by up to a quarter of that, 0.0133.
    # Everywhere else both paths agree to within 1e-3, the README's figure.
    normal = _gaussian(96) >= 2 ** -14
    assert 0.9 < normal.mean() < 1
    diff = np.abs(prob - direct)
    assert diff[:, normal].max() < 1e-3 and diff.max() < CORNER_TOL, (diff[:, normal].max(), diff.max())
    assert ((prob > 0.5) == (direct > 0.5))[:, normal].all()
    soft = np.stack([read_soft(work / "soft" / f"{c}.tif") for c in ids])
    assert np.abs(direct - soft).max() <= 0.5 / 255 + 1e-6  # teacher predict: equal up to uint8 quantisation
    assert np.abs(teacher.logits(x[:1]) - logits[:1]).max() < 1e-4  # batch-independent (instance norm)
    with pytest.raises(ValueError, match="N, 4, H, W"):
        teacher.logits(torch.zeros(1, 3, 96, 96))


#: the largest probability difference float16 rounding can make where nnU-Net's summed tile weight is subnormal
#: in float16 (see test_in_process_teacher_agrees_with_teacher_predict): 0.0133, plus float16's relative 2^-11
CORNER_TOL = 0.015


def _gaussian(patch):
    """nnU-Net's tile weighting written out: exp(-d^2 / (2 sigma^2)) about the centre, sigma = patch / 8, peak 10."""
    d = np.arange(patch) - patch // 2
    return 10 * np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * (patch / 8) ** 2))


def _sliding_window_reference(networks, img, steps_y, steps_x, patch=96, gaussian=True):
    """Cloud logits of one (4, H, W) image in float64: every tile through every network, the fold outputs
    averaged, the tiles blended with Gaussian weights. Returns (logit (H, W), summed weight (H, W))."""
    g = _gaussian(patch) if gaussian else np.ones((patch, patch))
    acc, w = np.zeros((2,) + img.shape[1:]), np.zeros(img.shape[1:])
    with torch.no_grad():
        for y in steps_y:
            for x in steps_x:
                tile = torch.from_numpy(np.ascontiguousarray(img[None, :, y:y + patch, x:x + patch]))
                z = np.mean([net(tile).double().numpy()[0] for net in networks], axis=0)
                acc[:, y:y + patch, x:x + patch] += z * g
                w[y:y + patch, x:x + patch] += g
    return (acc[1] - acc[0]) / w, w


def _larger_than_a_patch(data):
    """Two 160 x 128 normalised inputs (patch 96: 3 x 2 tiles at step 0.5) cut from 2 x 2 mosaics of chips."""
    test = resolve_split(data, "test")
    c = [normalise(read_chip(test.chip_dir(i))) for i in test.chip_ids()[:5]]
    mosaic = lambda a, b, d, e: np.concatenate([np.concatenate([a, b], 2), np.concatenate([d, e], 2)], 1)  # noqa
    return torch.from_numpy(np.stack([mosaic(c[0], c[1], c[2], c[3])[:, :160, :128],
                                      mosaic(c[4], c[3], c[2], c[1])[:, 20:180, 50:178]]))


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def test_sliding_window_branch_matches_a_float64_replay(trained):
    """An input larger than the patch goes through nnU-Net's sliding window: tiles at 0, 32, 64 (rows) and
    0, 32 (columns) -- 160 - 96 = 64 needs ceil(64 / 48) = 2 steps of at most half a patch, so 3 tiles 32 px
    apart; 128 - 96 = 32 needs 1 step, 2 tiles -- blended with Gaussian weights."""
    teacher = NnUNetTeacher.from_workspace(trained["ws"])
    assert teacher.patch_size == (96, 96)
    x = _larger_than_a_patch(trained["data"])
    z = teacher.logits(x)
    assert z.shape == (2, 1, 160, 128) and z.dtype == torch.float32
    for i in range(2):
        ref, w = _sliding_window_reference([teacher.network], x[i].numpy(), [0, 32, 64], [0, 32])
        normal = w >= 2 ** -14  # nnU-Net's float16 weights (see the test above); the scene corners only
        assert 0.95 < normal.mean() < 1
        diff = np.abs(_sigmoid(z[i, 0].numpy()) - _sigmoid(ref))
        assert diff[normal].max() < 1e-3 and diff.max() < CORNER_TOL, (diff[normal].max(), diff.max())
        # not a near miss: the same tiles blended with equal weights differ by far more
        flat, _ = _sliding_window_reference([teacher.network], x[i].numpy(), [0, 32, 64], [0, 32], gaussian=False)
        assert np.abs(_sigmoid(flat) - _sigmoid(ref)).max() > 0.05


def test_fold_ensemble_averages_the_folds_logits(trained, tmp_path):
    """Two folds: the ensemble's logits are the mean of the single folds' logits, on the batched path (input
    = patch) exactly and on the sliding-window path as a float64 replay averaging the folds per tile."""
    import shutil

    src = Path(json.loads(trained["ws"].teacher_json.read_text())["model_folder"])
    folder = tmp_path / src.name  # fold 0 and a second "fold": fold 0's weights, each scaled by exp(N(0, 0.05))
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("fold_*"))
    (folder / "fold_0").mkdir()
    shutil.copy(src / "fold_0" / "checkpoint_final.pth", folder / "fold_0")
    ck = torch.load(src / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(0)
    ck["network_weights"] = {k: v * torch.exp(0.05 * torch.randn(v.shape, generator=g)) if v.is_floating_point()
                             else v for k, v in ck["network_weights"].items()}
    (folder / "fold_1").mkdir()
    torch.save(ck, folder / "fold_1" / "checkpoint_final.pth")
    load = lambda folds: NnUNetTeacher(folder, folds=folds, workspace=trained["ws"])  # noqa: E731
    both, f0, f1 = load((0, 1)), load((0,)), load((1,))

    test = resolve_split(trained["data"], "test")
    x = torch.from_numpy(np.stack([normalise(read_chip(test.chip_dir(c))) for c in test.chip_ids()[:3]]))
    z0, z1, zb = f0.logits(x), f1.logits(x), both.logits(x)
    assert (z0 - z1).abs().max() > 1.0  # two different folds
    assert torch.allclose(zb, (z0 + z1) / 2, atol=1e-4, rtol=0)
    # the logits are averaged, not the probabilities (which would give another, here clearly different, answer)
    assert (torch.sigmoid(zb) - (torch.sigmoid(z0) + torch.sigmoid(z1)) / 2).abs().max() > 0.01

    big = _larger_than_a_patch(trained["data"])
    zb = both.logits(big)
    for i in range(2):
        ref, w = _sliding_window_reference([f0.network, f1.network], big[i].numpy(), [0, 32, 64], [0, 32])
        diff = np.abs(_sigmoid(zb[i, 0].numpy()) - _sigmoid(ref))
        normal = w >= 2 ** -14
        assert diff[normal].max() < 1e-3 and diff.max() < CORNER_TOL, (diff[normal].max(), diff.max())


def _plain_conv_unet_params(kw: dict, in_channels: int = 4, classes: int = 2) -> int:
    """Parameters of nnU-Net's PlainConvUNet counted here, layer by layer, from a plan's ``arch_kwargs``: encoder
    stage s has n_conv_per_stage[s] convs (kernel k_s, the first from the previous width) each with a bias and an
    affine norm (2 per channel); decoder stage j (deepest first) has a transposed conv (kernel = the stride of the
    stage below, with bias), n_conv_per_stage_decoder[j] convs (the first reads the skip concatenated: twice the
    width) and a 1x1 segmentation conv with bias to ``classes`` outputs (one per decoder stage, as nnU-Net builds
    them for deep supervision)."""
    widths = kw["features_per_stage"]
    kernel = [int(np.prod(k)) for k in kw["kernel_sizes"]]
    stride = [int(np.prod(s)) for s in kw["strides"]]
    bias, norm = int(bool(kw["conv_bias"])), 2 * int(bool((kw["norm_op_kwargs"] or {}).get("affine")))

    def conv(cin, cout, k):
        return cin * cout * k + bias * cout + norm * cout

    n, cin = 0, in_channels
    for s, w in enumerate(widths):
        for _ in range(kw["n_conv_per_stage"][s]):
            n, cin = n + conv(cin, w, kernel[s]), w
    for j in range(len(widths) - 1):
        below, skip = widths[-1 - j], widths[-2 - j]
        n += below * skip * stride[-1 - j] + bias * skip
        cin = 2 * skip
        for _ in range(kw["n_conv_per_stage_decoder"][j]):
            n, cin = n + conv(cin, skip, kernel[-2 - j]), skip
        n += skip * classes + classes
    return n


def test_info_json_reports_the_parameters_of_the_planned_architecture(trained):
    r = cli("teacher", "info", "--workdir", trained["ws"].root, "--json")
    d = json.loads(r.output)
    conf = "2d_p96_b4_f16-128_bn"
    budget = d["configurations"][conf]
    for key in ("params", "n_stages", "features_per_stage", "patch_size", "batch_size"):
        assert key in budget
    assert budget["patch_size"] == [96, 96] and budget["batch_size"] == 4
    assert budget["features_per_stage"][0] == 16 and max(budget["features_per_stage"]) <= 128
    # the parameters of the network the plans describe, counted here from its architecture in nnUNetPlans.json
    from cloudkd.teacher.workspace import DEFAULT_DATASET_ID, plans_file

    plans = json.loads(plans_file(trained["ws"], DEFAULT_DATASET_ID).read_text())
    kw = plans["configurations"][conf]["architecture"]["arch_kwargs"]
    assert kw["features_per_stage"] == budget["features_per_stage"] == [16, 32, 64, 128, 128]
    assert budget["params"] == _plain_conv_unet_params(kw) == 1_288_536
    assert NnUNetTeacher.from_workspace(trained["ws"]).n_params == budget["params"]  # the network the teacher runs
    assert d["teacher"]["folds"] == [0]


def test_training_resumes_after_an_interruption(trained):
    """Kill a training run after its first checkpoint, then --continue: it resumes, not restarts."""
    ws = trained["ws"]
    exe = str(Path(sys.executable).with_name("cloudkd"))
    budget = list(BUDGET)
    budget[1] = "4"  # epochs
    args = [exe, "teacher", "train", "--workdir", str(ws.root), "--fold", "1", "--device", "cpu", *budget]
    fold_dir = ws.results / "Dataset501_OnCloudN" / "nnUNetTrainerCloudKD__nnUNetPlans__2d_p96_b4_f16-128_bn" / "fold_1"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (fold_dir / "checkpoint_latest.pth").is_file():
            assert proc.poll() is None, "training ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (fold_dir / "checkpoint_final.pth").exists()
    saved = torch.load(fold_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"]
    assert 1 <= saved < 4
    # --continue without repeating the budget: the run's recorded settings, so the same configuration folder
    r = runner.invoke(app, ["teacher", "train", "--workdir", str(ws.root), "--fold", "1", "--device", "cpu",
                            "--continue"])
    assert r.exit_code == 0, r.output
    assert "2d_p96_b4_f16-128_bn" in r.output and "epochs=4" in r.output
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 4
    logs = sorted(fold_dir.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    resumed = logs[-1].read_text()
    assert re.search(rf": Epoch {saved}\s*$", resumed, re.M) and not re.search(r": Epoch 0\s*$", resumed, re.M)
    info = json.loads(ws.teacher_json.read_text())
    assert info["folds"] == [0, 1]


def test_which_run_a_teacher_train_call_means(tmp_path, monkeypatch):
    """A seed alone keeps nnU-Net's schedule on a GPU; --continue takes the recorded run's settings."""
    from dataclasses import replace

    from cloudkd.teacher.train import SHAPE_FIELDS, resolve_budget
    from cloudkd.teacher.workspace import augmentation_workers_env

    ws = Workspace(tmp_path / "ws")
    gpu = resolve_budget(ws, "cuda", seed=3)
    assert gpu.budget is None and gpu.seed == 3 and not gpu.stock  # not the 5-epoch CPU budget
    assert resolve_budget(ws, "cuda:1", epochs=20).budget == Budget(epochs=20)
    assert resolve_budget(ws, "cuda").budget is None
    assert resolve_budget(ws, "cpu", seed=3).budget == Budget(seed=3)
    assert resolve_budget(ws, "cpu").budget == Budget()
    assert resolve_budget(ws, "cpu", stock=True).stock
    with pytest.raises(ValueError, match="no budget options"):
        resolve_budget(ws, "cuda", stock=True, seed=1)
    with pytest.raises(DataError, match="nothing to --continue"):
        resolve_budget(ws, "cpu", continue_training=True)
    r = runner.invoke(app, ["teacher", "train", "--workdir", str(ws.root), "--device", "cpu", "--continue"])
    assert r.exit_code == 2 and "nothing to --continue" in r.output
    ws.root.mkdir(parents=True)
    recorded = Budget(epochs=4, patch=96, batch=4, base_features=16, max_features=128, seed=7)
    (ws.root / "training.json").write_text(json.dumps({"budget": {**recorded.__dict__}, "seed": 7, "stock": False}))
    assert resolve_budget(ws, "cpu", continue_training=True).budget == recorded
    assert resolve_budget(ws, "cuda", continue_training=True).budget == recorded  # the run's device does not matter
    longer = resolve_budget(ws, "cpu", continue_training=True, epochs=10).budget
    assert longer.epochs == 10 and longer.configuration == recorded.configuration
    (ws.root / "training.json").write_text(json.dumps({"budget": None, "seed": 5, "stock": False}))
    again = resolve_budget(ws, "cuda", continue_training=True)
    assert again.budget is None and again.seed == 5
    with pytest.raises(ValueError, match="do not apply"):
        resolve_budget(ws, "cuda", continue_training=True, patch=128)
    assert set(SHAPE_FIELDS) == set(Budget.__dataclass_fields__) - {"seed"}
    # a named recipe is a budget on any device; options given override its fields; it starts a new run only
    from cloudkd.teacher.plans import TEACHER_RECIPES

    demo = TEACHER_RECIPES["demo"]
    assert resolve_budget(ws, "cuda", recipe_name="demo").budget == demo
    tuned = resolve_budget(ws, "cpu", recipe_name="demo", epochs=40, optimizer="sgd").budget
    assert tuned.epochs == 40 and tuned.optimizer == "sgd" and tuned.patch == demo.patch and tuned.lr == demo.lr
    # "long" is the demo recipe trained 8x longer (the study's long run), every other field the demo's
    long = resolve_budget(ws, "cpu", recipe_name="long").budget
    assert long.epochs == 128 and replace(long, epochs=demo.epochs) == demo
    with pytest.raises(ValueError, match="unknown teacher recipe 'nope'; recipes: demo, long"):
        resolve_budget(ws, "cpu", recipe_name="nope")
    with pytest.raises(ValueError, match="--continue"):
        resolve_budget(ws, "cpu", continue_training=True, recipe_name="demo")
    r = runner.invoke(app, ["teacher", "train", "--workdir", str(ws.root), "--recipe", "demo", "--loss", "dice"])
    assert r.exit_code == 2 and "budget loss must be one of" in r.output
    # data-augmentation workers: 0 in process on a CPU, nnU-Net's default on a GPU, the user's value if set
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    assert augmentation_workers_env("cpu") == {"nnUNet_n_proc_DA": "0"}
    assert augmentation_workers_env("cuda") == {} and augmentation_workers_env("cuda:0") == {}
    monkeypatch.setenv("nnUNet_n_proc_DA", "6")
    assert augmentation_workers_env("cpu") == augmentation_workers_env("cuda") == {"nnUNet_n_proc_DA": "6"}


def test_teacher_network_lives_on_the_teacher_device(trained, monkeypatch):
    """nnU-Net moves its network only inside its sliding window; the batched path needs it on the device."""
    moved = []
    to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        moved.append((self, torch.device(args[0]) if args and not isinstance(args[0], torch.dtype) else None))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    teacher = NnUNetTeacher.from_workspace(trained["ws"], device="cpu")
    assert any(m is teacher.network and d == torch.device("cpu") for m, d in moved)
    assert teacher.device == torch.device("cpu")
    assert all(p.device == teacher.device for p in teacher.network.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_online_teacher_on_cuda_matches_cpu(trained):
    test = resolve_split(trained["data"], "test")
    x = torch.from_numpy(np.stack([normalise(read_chip(test.chip_dir(c))) for c in test.chip_ids()[:2]]))
    cpu = NnUNetTeacher.from_workspace(trained["ws"], device="cpu").logits(x)
    gpu_teacher = NnUNetTeacher.from_workspace(trained["ws"], device="cuda")
    assert all(p.is_cuda for p in gpu_teacher.network.parameters())
    z = gpu_teacher.logits(x.cuda())  # the batched path: crop == patch
    assert z.is_cuda and torch.allclose(z.cpu(), cpu, atol=1e-2)


@pytest.mark.parametrize("problem", ["missing_labels", "mixed_sizes", "band_count"])
def test_prepare_rejects_bad_input_before_nnunet(tmp_path, problem):
    chips = {f"c{i}": np.full((4, 32, 32), 1000 + i, np.uint16) for i in range(4)}
    labels = {c: np.zeros((32, 32), np.uint8) for c in chips}
    if problem == "missing_labels":
        labels.pop("c2")
    if problem == "mixed_sizes":
        chips["c3"] = np.full((4, 64, 64), 1000, np.uint16)
        labels["c3"] = np.zeros((64, 64), np.uint8)
    root = make_dataset(tmp_path / "d", chips, labels=labels)
    if problem == "band_count":
        tifffile.imwrite(root / "train_features" / "c1" / "B08.tif", np.zeros((3, 32, 32), np.uint16))
        (root / "train_features" / "c0" / "B03.tif").unlink()
    ws = Workspace(tmp_path / "ws")
    expect = {"missing_labels": r"c2: .*missing label file",
              "mixed_sizes": r"c3: .*wrong shape \(64, 64\), expected \(32, 32\)",
              "band_count": r"c0: .*B03\.tif: missing band file(.|\n)*c1: .*B08\.tif: expected a single-band"}
    with pytest.raises(DataError, match=expect[problem]) as e:
        prepare(root, ws, k=2, progress=False)
    assert "nothing was written" in str(e.value)
    assert not ws.raw.exists() or not any(ws.raw.iterdir())
    (root / "train_labels").rename(root / "elsewhere")
    with pytest.raises(DataError, match="labels folder does not exist"):
        prepare(root, ws, k=2, progress=False)


def test_default_plan_for_512_chips_is_the_46m_nnunet(tmp_path):
    """nnU-Net's own plan for 4-band 512x512 chips: 8 stages, 32..512 features, about 46 M parameters."""
    data = tmp_path / "d"
    synthesize(data, SynthConfig(n_train=6, n_test=0, size=512, seed=3), workers=2, progress=False)
    ws = Workspace(tmp_path / "ws")
    prepare(data, ws, k=2, progress=False)
    plan_and_preprocess(ws, 501)
    plans = json.loads((ws.preprocessed / "Dataset501_OnCloudN" / "nnUNetPlans.json").read_text())
    d = describe_plan(plans, "2d")
    assert d["n_stages"] == 8 and d["patch_size"] == [512, 512]
    assert d["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512, 512]
    assert d["params"] == NNUNET_2D_PARAMS  # the constant the student presets are compared with
    assert _plain_conv_unet_params(plans["configurations"]["2d"]["architecture"]["arch_kwargs"]) == NNUNET_2D_PARAMS
    assert Budget(patch=256).configuration == "2d_p256_b2_bn"
    assert Budget(patch=256, norm="instance").configuration == "2d_p256_b2"


def test_online_distillation_from_the_nnunet_teacher(trained, tmp_path):
    """Patient and consistent: the in-process nnU-Net sees exactly the augmented crops the student sees."""
    import pandas as pd
    from cloudkd.student.train import TrainConfig, fit

    folds = trained["work"] / "folds.csv"
    r = fit(TrainConfig(data=str(trained["data"]), out=str(tmp_path / "s"), model="unet-s", folds=str(folds),
                        epochs=4, batch_size=4, crop=96, lr=5e-3, kd_weight=1.0,
                        teacher_nnunet=str(trained["ws"].root), accelerator="cpu", progress=False))
    info = json.loads((tmp_path / "s" / "student.json").read_text())
    assert info["teacher_mode"] == "online" and r.val_jaccard is not None
    kd = pd.read_csv(next((tmp_path / "s" / "logs").rglob("metrics.csv")))["train_kd"].dropna()
    assert len(kd) == 4 and np.isfinite(kd).all() and kd.iloc[-1] < kd.iloc[0]  # the student moves to the teacher


def test_trainer_leaves_out_intensity_augmentation(monkeypatch):
    """The teacher sees absolute reflectance as the student does: no brightness, contrast or gamma changes."""
    import importlib.util

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from cloudkd.teacher.workspace import TRAINER_DIR

    spec = importlib.util.spec_from_file_location("cloudkd_trainer", TRAINER_DIR / "nnUNetTrainerCloudKD.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kw = dict(patch_size=np.array([64, 64]), rotation_for_DA=(0, 0), deep_supervision_scales=None,
              mirror_axes=(0, 1), do_dummy_2d_data_aug=False)

    def names(compose):
        return [type(getattr(t, "transform", t)).__name__ for t in compose.transforms]

    default = names(nnUNetTrainer.get_training_transforms(**kw))
    ours = names(mod.nnUNetTrainerCloudKD.get_training_transforms(**kw))
    assert {"MultiplicativeBrightnessTransform", "ContrastTransform", "GammaTransform"} <= set(default)
    assert ours == [n for n in default if n not in mod.INTENSITY_TRANSFORMS]
    assert {"SpatialTransform", "MirrorTransform"} <= set(ours)
    monkeypatch.setenv("CLOUDKD_NNUNET_INTENSITY_AUG", "1")
    assert names(mod.nnUNetTrainerCloudKD.get_training_transforms(**kw)) == default


def test_budget_teacher_uses_batchnorm_so_absolute_brightness_survives(trained):
    """InstanceNorm normalises each chip's feature maps on their own, so a clear chip's brightest ground looks
    like cloud; the budget configuration uses BatchNorm (running statistics at inference) unless asked not to."""
    from cloudkd.teacher.workspace import DEFAULT_DATASET_ID, plans_file
    from cloudkd.teacher.plans import add_budget_configuration

    ws = trained["ws"]
    info = json.loads(ws.teacher_json.read_text())
    assert info["configuration"].endswith("_bn") and info["budget"]["norm"] == "batch"
    plans = json.loads(plans_file(ws, DEFAULT_DATASET_ID).read_text())["configurations"]
    assert plans[info["configuration"]]["architecture"]["arch_kwargs"]["norm_op"] == "torch.nn.BatchNorm2d"
    assert "InstanceNorm2d" in plans["2d"]["architecture"]["arch_kwargs"]["norm_op"]  # nnU-Net's own plan stays
    inst = add_budget_configuration(ws, DEFAULT_DATASET_ID, Budget(patch=96, norm="instance"))
    plans = json.loads(plans_file(ws, DEFAULT_DATASET_ID).read_text())["configurations"]
    assert not inst.endswith("_bn") and "InstanceNorm2d" in plans[inst]["architecture"]["arch_kwargs"]["norm_op"]
    net = NnUNetTeacher.from_workspace(ws, device="cpu").network
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with pytest.raises(ValueError, match="norm"):
        Budget(norm="group")
    r = runner.invoke(app, ["teacher", "train", "--workdir", str(ws.root), "--device", "cpu", "--norm", "group"])
    assert r.exit_code == 2 and "norm must be one of" in r.output



def test_workspace_restores_the_plot_backend_that_nnunet_switches(tmp_path):
    """nnU-Net's logger calls matplotlib.use("agg") when imported; the workspace puts the user's backend back, so
    a notebook's figures keep showing after the teacher trains or loads."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        with Workspace(tmp_path / "ws").active():
            import nnunetv2.run.run_training  # noqa: F401 - switches to agg when first imported
            matplotlib.use("agg")  # as that import does (it may have run earlier in this process)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_workspace_restores_the_plot_style_that_nnunet_themes(tmp_path):
    """nnU-Net's progress plot calls seaborn's set(font_scale=2.5) every epoch, which themes the whole process; the
    workspace puts matplotlib's look back, so a chart drawn after an in-process training keeps its fonts."""
    import matplotlib
    import seaborn as sns

    with matplotlib.rc_context():
        before = {k: matplotlib.rcParams[k] for k in ("font.size", "axes.facecolor", "axes.prop_cycle")}
        interactive = matplotlib.is_interactive()
        with Workspace(tmp_path / "ws").active():
            sns.set(font_scale=2.5)  # as nnunet_logger.plot_progress_png does
            assert matplotlib.rcParams["font.size"] != before["font.size"]
        assert {k: matplotlib.rcParams[k] for k in before} == before
        assert matplotlib.is_interactive() == interactive  # the backend's own settings are the backend's to set


def test_force_with_a_bad_device_or_fold_deletes_nothing(trained):
    """`teacher train --fold 0 --device bogus --force` used to delete the trained fold_0 (both checkpoints) and only
    then fail on the device; `--fold 99` trained on nnU-Net's random split and was listed in teacher.json."""
    from cloudkd.common.errors import DataError
    from cloudkd.teacher.plans import Budget
    from cloudkd.teacher.train import train

    ws = trained["ws"]
    teacher = json.loads(ws.teacher_json.read_text())
    folds = teacher["folds"]  # 0, and any fold another test trained in this workspace
    fold_dir = Path(teacher["model_folder"]) / "fold_0"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in fold_dir.iterdir())
    budget = Budget(**teacher["budget"])
    for device in ("bogus", "cuda:7"):
        with pytest.raises(DataError, match="device"):
            train(ws, 501, 0, budget, device=device, force=True)
    with pytest.raises(DataError, match="fold 99 does not exist.*folds 0..2"):
        train(ws, 501, 99, budget, device="cpu", force=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in fold_dir.iterdir()) == before
    assert (fold_dir / "checkpoint_final.pth").is_file()
    assert json.loads(ws.teacher_json.read_text())["folds"] == folds and 99 not in folds
    r = runner.invoke(app, [str(a) for a in ("teacher", "train", "--workdir", ws.root, "--fold", 0, "--fold", 99,
                                             "--device", "cpu", "--force", *BUDGET)])
    assert r.exit_code != 0 and "fold 99 does not exist" in str(r.exception)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in fold_dir.iterdir()) == before  # fold 0 not retrained


def test_audit_with_the_teacher_as_judge(trained, tmp_path):
    """`cloudkd evaluate audit --teacher-nnunet WORKDIR`: every labelled chip of the split judged by the teacher;
    each chip's label IoU is the one of the in-process teacher's masks (the prediction rule on its logits)."""
    import pandas as pd

    from cloudkd.common.infer import masks_from_logits

    data, ws = trained["data"], trained["ws"]
    cli("evaluate", "audit", data, "--split", "test", "--teacher-nnunet", ws.root, "--out", tmp_path / "a",
        "--top", 2)
    table = pd.read_csv(tmp_path / "a" / "audit.csv")
    test = resolve_split(data, "test")
    assert sorted(table["chip_id"]) == test.chip_ids()
    teacher = NnUNetTeacher.from_workspace(ws)
    for _, r in table.iterrows():
        refl = read_chip(test.chip_dir(r["chip_id"]))
        mask = masks_from_logits(teacher.logits(torch.from_numpy(normalise(refl)[None])), 0.5,
                                 nodata_mask(refl[None]))[0] > 0
        lab = read_label(test.label_path(r["chip_id"])) > 0
        union = (lab | mask).sum()
        # a few pixels may flip at the threshold between batch sizes (float rounding): 1e-3 is ~5 of 9,216
        assert r["label_iou"] == pytest.approx((lab & mask).sum() / union if union else 1.0, abs=1e-3), r["chip_id"]


def _trainer_module():
    import importlib.util

    from cloudkd.teacher.workspace import TRAINER_DIR

    spec = importlib.util.spec_from_file_location("cloudkd_trainer", TRAINER_DIR / "nnUNetTrainerCloudKD.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _initialised_trainer(ws, monkeypatch, budget):
    """The project's nnU-Net trainer built as ``teacher train`` builds it for ``budget`` (the recipe reaches it
    through Budget.env()), initialised (network, optimiser, loss) but not trained."""
    from cloudkd.teacher.plans import add_budget_configuration
    from cloudkd.teacher.workspace import DEFAULT_DATASET_ID, plans_file

    configuration = add_budget_configuration(ws, DEFAULT_DATASET_ID, budget)
    plans = {**json.loads(plans_file(ws, DEFAULT_DATASET_ID).read_text()), "continue_training": False}
    dataset_json = json.loads((ws.preprocessed / ws.dataset_name(DEFAULT_DATASET_ID) / "dataset.json").read_text())
    for k, v in budget.env().items():
        monkeypatch.setenv(k, v)
    with ws.active():
        trainer = _trainer_module().nnUNetTrainerCloudKD(plans, configuration, 0, dataset_json, torch.device("cpu"))
        trainer.initialize()
    return trainer


def test_teacher_recipe_reaches_nnunets_optimiser_loss_network_and_sampling(trained, monkeypatch):
    """Each recipe field of the budget changes what nnU-Net trains with; the defaults are nnU-Net's own."""
    import math

    ws = trained["ws"]
    small = dict(epochs=8, patch=96, batch=4, base_features=8, max_features=32)
    stock = _initialised_trainer(ws, monkeypatch, Budget(**small))
    assert type(stock.optimizer) is torch.optim.SGD and stock.optimizer.param_groups[0]["momentum"] == 0.99
    assert stock.initial_lr == 1e-2 and stock.weight_decay == 3e-5 and stock.oversample_foreground_percent == 0.33
    assert stock.enable_deep_supervision and isinstance(stock.network(torch.zeros(1, 4, 96, 96)), (list, tuple))

    t = _initialised_trainer(ws, monkeypatch, Budget(**small, optimizer="adamw", deep_supervision=False,
                                                     oversample=0.0, loss="ce"))
    assert type(t.optimizer) is torch.optim.AdamW and t.initial_lr == 3e-3 and t.weight_decay == 1e-4
    for epoch in (0, 2, 8):  # the cosine schedule, stepped per epoch as nnU-Net steps its poly schedule
        t.lr_scheduler.step(epoch)
        assert t.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * epoch / 8)))
    out = t.network(torch.zeros(2, 4, 96, 96))
    assert torch.is_tensor(out) and out.shape == (2, 2, 96, 96)  # no deep-supervision outputs
    assert t.oversample_foreground_percent == 0.0
    # cross-entropy alone: the loss equals plain cross-entropy; nnU-Net's default adds a Dice term
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 96, 96), (torch.rand(2, 1, 96, 96) > 0.6).float()
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    assert float(t.loss(logits, target)) == pytest.approx(float(ce), rel=1e-6)
    dice_ce = _initialised_trainer(ws, monkeypatch, Budget(**small, deep_supervision=False))
    assert float(dice_ce.loss(logits, target)) < float(ce) - 0.05  # + (-soft Dice): a different loss

    lr = _initialised_trainer(ws, monkeypatch, Budget(**small, lr=0.03))
    assert type(lr.optimizer) is torch.optim.SGD and lr.initial_lr == 0.03


def test_teacher_spatial_augmentation_strength(monkeypatch):
    """``spatial`` scales the probabilities of nnU-Net's rotation and scaling (0.2 each), capped at 1."""
    mod = _trainer_module()
    kw = dict(patch_size=np.array([64, 64]), rotation_for_DA=(0, 0), deep_supervision_scales=None,
              mirror_axes=(0, 1), do_dummy_2d_data_aug=False)

    def spatial(factor):
        monkeypatch.setenv("CLOUDKD_NNUNET_SPATIAL", str(factor))
        t = [getattr(t, "transform", t) for t in mod.nnUNetTrainerCloudKD.get_training_transforms(**kw).transforms]
        s = [x for x in t if type(x).__name__ == "SpatialTransform"][0]
        return s.p_rotation, s.p_scaling

    assert spatial(1.0) == (0.2, 0.2)
    assert spatial(0) == (0.0, 0.0)
    assert spatial(2.5) == (0.5, 0.5)
    assert spatial(10) == (1.0, 1.0)
    for bad in (dict(optimizer="adam"), dict(loss="dice"), dict(spatial=-1.0), dict(oversample=1.5),
                dict(lr=float("nan"))):
        with pytest.raises(ValueError):
            Budget(**bad)


# ------------------------------------------------------------------------------- the output policy (issue 29)
def _copy_workspace(trained, dest):
    """A copy of the trained workspace (its teacher.json and training.json pointing into the copy)."""
    import shutil

    src = trained["ws"].root
    shutil.copytree(src, dest)
    for name in ("teacher.json", "training.json"):
        p = dest / name
        if p.is_file():
            p.write_text(p.read_text().replace(str(src), str(dest)))
    return Workspace(dest)


def test_a_failed_retraining_leaves_the_trained_fold_usable(trained, tmp_path, monkeypatch):
    """`teacher train --force` deleted the trained fold before training: a kill during the retraining left no
    teacher. Now nnU-Net retrains under a side results folder and the new fold replaces the old one only when its
    checkpoint_final.pth exists."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from cloudkd.teacher.train import train

    def lock_path(folder):
        return folder.parent / f".{folder.name}.cloudkd-lock"

    SIDE_RESULTS = ".nnUNet_results.cloudkd-new"  # where a retraining is built (cloudkd.teacher.train)

    ws = _copy_workspace(trained, tmp_path / "ws")
    teacher = json.loads(ws.teacher_json.read_text())
    fold_dir = Path(teacher["model_folder"]) / "fold_0"
    final = fold_dir / "checkpoint_final.pth"
    old = final.read_bytes()
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in fold_dir.rglob("*"))
    record = (ws.root / "training.json").read_text()
    old_logs = {p.name for p in fold_dir.glob("training_log_*.txt")}
    budget = Budget(**teacher["budget"])

    def killed(self):  # started writing (a checkpoint cut short, as a kill while saving leaves it), then stopped
        Path(self.output_folder, "checkpoint_final.pth").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(nnUNetTrainer, "run_training", killed)
    with pytest.raises(KeyboardInterrupt):
        train(ws, 501, 0, budget, device="cpu", force=True)
    assert final.read_bytes() == old
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in fold_dir.rglob("*")) == before
    assert (ws.root / "training.json").read_text() == record
    assert not (ws.root / SIDE_RESULTS).exists() and not lock_path(fold_dir).exists()
    t = NnUNetTeacher.from_workspace(ws, folds=[0])  # the old teacher still loads and predicts
    refl = read_chip(trained["data"] / "test_features" / resolve_split(trained["data"], "test").chip_ids()[0])
    assert t.predict_chip(refl)[0].shape == refl.shape[1:]

    def retrained(self):  # a retraining that finishes: its fold has a (new) checkpoint_final.pth
        Path(self.output_folder, "checkpoint_final.pth").write_bytes(old)
        Path(self.output_folder, "retrained.txt").write_text("new\n")

    monkeypatch.setattr(nnUNetTrainer, "run_training", retrained)
    r = train(ws, 501, 0, budget, device="cpu", force=True)
    assert not r.reused and (fold_dir / "retrained.txt").is_file()
    assert not old_logs & {p.name for p in fold_dir.glob("training_log_*.txt")}  # the old fold's files went
    assert not (ws.root / SIDE_RESULTS).exists() and not lock_path(fold_dir).exists()


def test_a_damaged_teacher_checkpoint_is_one_line_in_predict_and_distill(trained, tmp_path, capsys):
    """A 0-byte checkpoint_final.pth (a training killed while saving) gave exit 130 and no message."""
    from conftest import invoke, snapshot

    ws = _copy_workspace(trained, tmp_path / "ws")
    fold_dir = Path(json.loads(ws.teacher_json.read_text())["model_folder"]) / "fold_0"
    for content in (b"", b"PK\x03\x04 cut short"):
        (fold_dir / "checkpoint_final.pth").write_bytes(content)
        before = snapshot(tmp_path)
        for args in (["teacher", "predict", "--workdir", ws.root, "--features", trained["data"] / "test_features",
                      "--masks-out", tmp_path / "m", "--device", "cpu"],
                     ["student", "distill", trained["data"], "--out", tmp_path / "s", "--teacher-nnunet", ws.root,
                      "--folds", trained["work"] / "folds.csv", "--epochs", 1, "--steps", 1, "--batch", 2,
                      "--crop", 32, "--accelerator", "cpu"]):
            code, text = invoke(args, capsys)
            lines = [line for line in text.splitlines() if line.strip()]
            assert code == 2 and "Traceback" not in text and len(lines) == 1, text
            assert "checkpoint_final.pth: a damaged checkpoint" in lines[0], text
            assert snapshot(tmp_path) == before, args


def test_a_trained_fold_is_reused_only_for_the_epochs_it_was_trained_for(trained, tmp_path, capsys):
    """The model folder names the recipe and the size, not the run's length: a budget of other epochs got the
    trained fold back as if it were its own (a recipe moved to 16 epochs kept serving its 8-epoch teacher)."""
    from conftest import invoke, snapshot

    ws = _copy_workspace(trained, tmp_path / "ws")
    fold_dir = Path(json.loads(ws.teacher_json.read_text())["model_folder"]) / "fold_0"
    before = snapshot(fold_dir)
    for epochs, hint in (("12", True), ("4", False)):
        budget = list(BUDGET)
        budget[1] = epochs
        code, text = invoke(["teacher", "train", "--workdir", ws.root, "--fold", 0, "--device", "cpu", *budget],
                            capsys)
        assert code == 2 and "Traceback" not in text, text
        assert f"fold 0 in {fold_dir.parent} was trained for 8 epochs and this budget asks for {epochs}" in text
        assert ("--continue extends it to 12" in text) == hint and "--force trains it again" in text
        assert snapshot(fold_dir) == before
    code, text = invoke(["teacher", "train", "--workdir", ws.root, "--fold", 0, "--device", "cpu", *BUDGET], capsys)
    assert code == 0 and "fold 0: already trained (reused" in text and "8 epochs" in text, text


def test_each_teacher_recipe_trains_into_its_own_model_folder():
    """A fold is reused only by the recipe that trained it: the configuration (and so nnU-Net's model folder) names
    every recipe field that is not nnU-Net's default; nnU-Net's recipe keeps the names it always had."""
    size = dict(patch=256, batch=4, base_features=8, max_features=128)
    assert Budget(**size).configuration == "2d_p256_b4_f8-128_bn"
    variants = [dict(optimizer="adamw"), dict(lr=0.03), dict(loss="ce"), dict(deep_supervision=False),
                dict(spatial=0.0), dict(oversample=0.0), dict(optimizer="adamw", lr=0.01)]
    names = [Budget(**size, **v).configuration for v in variants]
    assert len(set(names)) == len(names) and Budget(**size).configuration not in names
    assert Budget(**size, seed=5, epochs=40).configuration == Budget(**size).configuration  # run length: same net


def test_fitted_threshold_is_the_validation_best_and_predict_uses_it(trained, tmp_path):
    """`teacher fit-threshold` sweeps the prediction rule's threshold on the validation chips of the fold (the
    ones it did not train on, from splits_final.json) and records the best global Jaccard's (ties: nearest 0.5)
    in teacher.json; the teacher loaded from the workspace and `teacher predict` then make masks at it, an explicit
    --threshold wins, and an ensemble of other folds does not inherit a fold's fit."""
    from cloudkd.teacher.rule import THRESHOLDS, recorded_threshold

    ws = _copy_workspace(trained, tmp_path / "ws")
    r = cli("teacher", "fit-threshold", "--workdir", ws.root, "--fold", 0, "--device", "cpu")
    rec = json.loads(ws.teacher_json.read_text())["threshold"]
    assert f"fold 0: threshold {rec['threshold']:g}" in r.output
    # the curve again, in numpy, from the validation chips nnU-Net's split names
    val = json.loads((ws.preprocessed / ws.dataset_name(501) / "splits_final.json").read_text())[0]["val"]
    split = resolve_split(trained["data"], "train")
    assert rec["n_chips"] == len(val) > 0 and set(val) <= set(split.chip_ids())
    teacher = NnUNetTeacher.from_workspace(ws, folds=[0])
    inter, union = np.zeros(len(THRESHOLDS)), np.zeros(len(THRESHOLDS))
    for cid in val:
        refl = read_chip(split.chip_dir(cid))
        prob, _ = teacher.predict_chip(refl)
        label, clear = read_label(split.label_path(cid)) > 0, ~nodata_mask(refl)
        for i, t in enumerate(THRESHOLDS):
            m = (prob > t) & clear
            inter[i] += (m & label).sum()
            union[i] += (m | label).sum()
    want = inter / union
    np.testing.assert_allclose([rec["val_jaccard"][f"{t:g}"] for t in THRESHOLDS], want, atol=1e-6)
    best = [t for t, j in zip(THRESHOLDS, want) if j >= want.max() - 1e-12]
    assert rec["threshold"] == min(best, key=lambda t: abs(t - 0.5))
    assert teacher.threshold == rec["threshold"]
    # predict at the recorded threshold: made a threshold the rule's default would not give, to tell them apart
    info = json.loads(ws.teacher_json.read_text())
    info["threshold"]["threshold"] = 0.3
    ws.teacher_json.write_text(json.dumps(info))
    test = resolve_split(trained["data"], "test")
    for extra, t in (([], 0.3), (["--threshold", "0.7"], 0.7)):
        out = tmp_path / f"masks{t}"
        r = cli("teacher", "predict", "--workdir", ws.root, "--fold", 0, "--features", test.features_dir,
                "--masks-out", out, "--device", "cpu", *extra)
        assert f"threshold {t:g}" in r.output
        for cid in test.chip_ids()[:4]:
            refl = read_chip(test.chip_dir(cid))
            prob, _ = teacher.predict_chip(refl, 0.5)
            np.testing.assert_array_equal(read_label(out / f"{cid}.tif"), (prob > t) & ~nodata_mask(refl))
    assert recorded_threshold(info, [0]) == 0.3 and recorded_threshold(info, [0, 1]) is None
    assert recorded_threshold({"folds": [0]}, [0]) is None
    untrained = max(info["folds"]) + 1  # other tests of this module may have trained more folds
    r = runner.invoke(app, ["teacher", "fit-threshold", "--workdir", str(ws.root), "--fold", str(untrained),
                            "--device", "cpu"])
    assert r.exit_code != 0 and f"fold {untrained} is not trained" in str(r.exception)
    # a train call that reuses the fold keeps the fit; one that trains the fold again drops it
    r = cli("teacher", "train", "--workdir", ws.root, "--fold", 0, "--device", "cpu", *BUDGET)
    assert "reused" in r.output and json.loads(ws.teacher_json.read_text())["threshold"]["threshold"] == 0.3
    from dataclasses import replace

    from cloudkd.teacher.train import TrainResult, _record_teacher

    info = json.loads(ws.teacher_json.read_text())
    done = TrainResult(Path(info["model_folder"]), 0, info["configuration"], info["trainer"], 8, 1.0, None, True, 1.0)
    _record_teacher(ws, 501, replace(done, fold=1, reused=False), None)  # another fold trained: fold 0's fit stays
    assert json.loads(ws.teacher_json.read_text())["threshold"]["fold"] == 0
    _record_teacher(ws, 501, replace(done, reused=False), None)  # fold 0 trained again
    assert "threshold" not in json.loads(ws.teacher_json.read_text())
