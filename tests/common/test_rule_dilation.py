"""The prediction rule's threshold and dilation (issue 30 item 4): the above-threshold mask grown by a margin, both
learnt on the generated validation split (`cloudkd student fit-rule`), applied by every consumer of the one rule."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from cloudkd.common.infer import (clear_nodata, dilate_masks, logit_threshold, masks_from_logits,
                                  masks_from_probabilities, nodata_mask, predict_masks)
from cloudkd.data import normalise, read_chip, read_label, read_mask, resolve_split
from cloudkd.student.runs import load_student, recorded_rule, run_rule

from conftest import invoke, one_line_refusal, scene_from_chips, wedged_copy, write_band_files

SIZE = 96  # the small generated chips
#: a dilation no command applies by chance
D = 3


def _scipy(mask, d):
    """The dilation by scipy: ``d`` iterations of the default (cross) structure, per image."""
    m = np.asarray(mask, bool)
    if d == 0:
        return m
    return np.stack([binary_dilation(a, iterations=d) for a in m.reshape(-1, *m.shape[-2:])]).reshape(m.shape)


# ------------------------------------------------------------------------------------------------ the rule
def test_no_dilation_gives_the_masks_of_the_rule_before_it_byte_for_byte():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (3, 1, 20, 24)).astype(np.float32)
    refl = rng.uniform(0.01, 0.5, (3, 4, 20, 24)).astype(np.float32)
    refl[1, :, :6, :5] = 0
    nd = nodata_mask(refl)
    for t in (0.3, 0.5, 0.7):
        before = clear_nodata((z[:, 0] > logit_threshold(t)).astype(np.uint8), nd)  # the rule as it was
        for got in (masks_from_logits(z, t, nd), masks_from_logits(torch.from_numpy(z), t, nd, dilate=0),
                    masks_from_probabilities(1 / (1 + np.exp(-z[:, 0].astype(np.float64))), t, nd, 0)):
            assert got.dtype == np.uint8 and got.shape == before.shape and got.tobytes() == before.tobytes(), t


def test_a_pixel_dilated_by_two_is_the_diamond_of_13_pixels():
    m = np.zeros((1, 9, 9), bool)
    m[0, 4, 4] = True
    grown = dilate_masks(m, 2)
    yy, xx = np.mgrid[0:9, 0:9]
    assert grown.sum() == 13
    assert np.array_equal(grown[0], np.abs(yy - 4) + np.abs(xx - 4) <= 2)
    # at the edge of the image nothing wraps round or leaks beyond it
    e = np.zeros((1, 5, 5), bool)
    e[0, 0, 0] = True
    assert np.array_equal(dilate_masks(e, 2)[0], (yy[:5, :5] + xx[:5, :5]) <= 2)


def test_the_dilation_is_scipys_cross_dilation_and_stays_within_each_image():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 33, 40)) > 0.97
    for d in range(6):
        assert np.array_equal(dilate_masks(masks, d), _scipy(masks, d)), d
    one = np.zeros((2, 8, 8), bool)
    one[0, 7, 3] = True  # on the last row of the first image: nothing reaches the second
    assert not dilate_masks(one, 4)[1].any()
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError):
            dilate_masks(masks, bad)


def test_nodata_pixels_are_cleared_after_the_dilation():
    z = np.full((1, 1, 9, 9), -5.0, np.float32)
    z[0, 0, 4, 4] = 5.0  # one cloud pixel beside a nodata column ...
    z[0, 0, 8, 8] = 5.0  # ... and one inside the nodata corner
    nd = np.zeros((1, 9, 9), bool)
    nd[0, :, 5] = True
    nd[0, 7:, 7:] = True
    got = masks_from_logits(z, 0.5, nd, dilate=2)[0]
    above = z[0, 0] > 0
    want = _scipy(above, 2) & ~nd[0]
    assert np.array_equal(got, want.astype(np.uint8))
    # the dilation comes first: the nodata column is cleared, the pixel 2 px away beyond it is cloud, and the cloud
    # pixel in the nodata corner grows out of it; clearing nodata first would give neither
    assert got[4, 5] == 0 and got[4, 6] == 1 and got[4, 3] == 1 and got[6, 8] == 1 and got[8, 8] == 0


def test_predict_masks_dilates_between_the_threshold_and_nodata():
    from test_rule import conv_case

    model, x, nd = conv_case(16)
    with torch.no_grad():
        above = (model(x)[:, 0] > logit_threshold(0.8)).numpy()
    want = _scipy(above, D) & ~nd
    got = predict_masks(model, x, nd, 0.8, dilate=D)
    assert np.array_equal(got, want.astype(np.uint8)) and (got != predict_masks(model, x, nd, 0.8)).any()


# ------------------------------------------------------------------------------------------------ the record
def test_a_run_without_a_recorded_dilation_reads_as_none(student, tmp_path):
    info = json.loads((student / "student.json").read_text())
    assert "rule" not in info
    assert run_rule(info) == (0.5, 0) and recorded_rule(student) == (0.5, 0)
    assert run_rule({"config": {"threshold": 0.4}}) == (0.4, 0) and run_rule({}) == (0.5, 0)
    assert run_rule({"config": {"threshold": 0.4}, "rule": {"threshold": 0.45, "dilate": 6}}) == (0.45, 6)
    run = tmp_path / "run"
    shutil.copytree(student, run, ignore=shutil.ignore_patterns("checkpoints", "logs", "tensorboard"))
    info["rule"] = {"threshold": 0.5, "dilate": -2}
    (run / "student.json").write_text(json.dumps(info))
    from cloudkd.common.errors import DataError

    with pytest.raises(DataError, match="student.json: not a recorded prediction rule"):
        recorded_rule(run)


def _val_chips(run):
    """The validation chips of a run, from its datamodule, checked against the digest run.json recorded."""
    import hashlib

    from cloudkd.data.datamodule import CloudDataModule

    info = json.loads((run / "student.json").read_text())
    cfg = info["config"]
    dm = CloudDataModule(cfg["data"], cfg["folds"], info["val_fold"], seed=cfg["seed"], exclude=cfg["exclude"])
    dm.setup_index()
    ids = sorted(dm.val_index["chip_id"])
    recorded = json.loads((run / "run.json").read_text())["identity"]["val_chips"]
    assert recorded == {"n": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    return dm.val_index


def _val_grid(run, thresholds, max_dilate):
    """Global Jaccard of every (threshold, dilation) on the run's validation chips, recomputed here: its
    validation chips, its student.pt, the logit of each threshold and scipy's dilation."""
    index = _val_chips(run)
    net = load_student(run)
    inter = np.zeros((len(thresholds), max_dilate + 1))
    union = np.zeros_like(inter)
    for r in index.itertuples():
        refl = read_chip(r.features)
        with torch.no_grad():
            z = net(torch.from_numpy(normalise(refl[None])))[0, 0].numpy()
        lab = read_label(r.label) > 0
        for i, t in enumerate(thresholds):
            for d in range(max_dilate + 1):
                pred = _scipy(z > np.log(t / (1 - t)), d) & ~nodata_mask(refl)
                inter[i, d] += (pred & lab).sum()
                union[i, d] += (pred | lab).sum()
    return index, inter / union


def test_fit_rule_records_the_dilation_of_the_best_validation_jaccard(student, tmp_path, capsys):
    """fit-rule at a given threshold 0.6 (where this briefly trained student's masks are tighter than its labels)
    scores every dilation 0..8 on the run's validation chips and records the best; recomputed here with scipy."""
    run = tmp_path / "run"
    shutil.copytree(student, run)
    code, text = invoke(["student", "fit-rule", run, "--max-dilate", 8, "--threshold", 0.6, "--batch", 4], capsys)
    assert code == 0, text
    info = json.loads((run / "student.json").read_text())
    rule = info["rule"]
    index, grid = _val_grid(run, [0.6], 8)
    want = grid[0]
    assert rule["fitted_on"]["n_chips"] == len(index) and rule["threshold"] == 0.6
    assert rule["fitted_on"]["thresholds"] == [0.6] and list(rule["val_jaccard"]) == ["0.6"]
    assert [rule["val_jaccard"]["0.6"][str(d)] for d in range(9)] == pytest.approx(want, abs=1e-12)
    best = int(np.flatnonzero(want == want.max())[0])
    assert rule["dilate"] == best and recorded_rule(run) == (0.6, best)
    assert 0 < best < 8  # a margin helps here, and not without end: not the trivial choice at either end
    assert f"dilate {best} px" in text and f"{want[0]:.4f} (threshold 0.6, undilated) -> {want[best]:.4f}" in text
    # everything else of the record is as training wrote it
    before = json.loads((student / "student.json").read_text())
    assert {k: v for k, v in info.items() if k != "rule"} == before


def test_best_rule_takes_the_best_score_then_the_smaller_dilation_then_the_threshold_nearest_the_runs():
    from cloudkd.common.infer import best_rule

    assert best_rule({(0.5, 0): 0.5, (0.7, 3): 0.8, (0.6, 2): 0.7}, 0.5) == (0.7, 3)
    assert best_rule({(0.5, 2): 0.8, (0.7, 1): 0.8, (0.9, 1): 0.8}, 0.5) == (0.7, 1)
    assert best_rule({(0.3, 1): 0.8, (0.6, 1): 0.8, (0.7, 1): 0.8}, 0.5) == (0.6, 1)
    assert best_rule({(0.4, 1): 0.8, (0.6, 1): 0.8}, 0.5) == (0.4, 1)


def test_fit_rule_fits_threshold_and_dilation_together_on_the_runs_own_validation(student, tmp_path, capsys):
    """Without --threshold, fit-rule scores every threshold of the one grid with every dilation and records the
    best pair; the whole table is recomputed here, and its corner (0.5, undilated) is training's own score."""
    from cloudkd.common.infer import FIT_THRESHOLDS
    from cloudkd.student.rule import fit_rule

    run = tmp_path / "run"
    shutil.copytree(student, run, ignore=shutil.ignore_patterns("checkpoints", "logs", "tensorboard"))
    fit = fit_rule(run, max_dilate=2, progress=False)
    info = json.loads((run / "student.json").read_text())
    rule = info["rule"]
    assert rule["fitted_on"]["thresholds"] == list(FIT_THRESHOLDS) and rule["fitted_on"]["max_dilate"] == 2
    _, grid = _val_grid(run, FIT_THRESHOLDS, 2)
    got = np.array([[rule["val_jaccard"][f"{t:g}"][str(d)] for d in range(3)] for t in FIT_THRESHOLDS])
    assert got == pytest.approx(grid, abs=1e-12)
    i, d = np.unravel_index(np.argmax(grid), grid.shape)
    assert (fit.threshold, fit.dilate) == (FIT_THRESHOLDS[i], d) and recorded_rule(run) == (FIT_THRESHOLDS[i], d)
    # undilated at the training threshold: the run's own validation score (Lightning's, of the same weights)
    assert fit.before == pytest.approx(info["val_jaccard"], abs=1e-6) and fit.base == 0.5
    # the same weights with every logit raised by 2 (a probability scale that moved): the fit moves the threshold
    # with it, to the grid's threshold nearest logit + 2, and finds the same masks' score again
    shifted = tmp_path / "shifted"
    shutil.copytree(student, shifted, ignore=shutil.ignore_patterns("checkpoints", "logs", "tensorboard"))
    state = torch.load(shifted / "student.pt", map_location="cpu")
    state["head.bias"] += 2.0
    torch.save(state, shifted / "student.pt")
    code, text = invoke(["student", "fit-rule", shifted, "--max-dilate", 2], capsys)
    assert code == 0, text
    t_s, d_s = recorded_rule(shifted)
    assert abs(np.log(t_s / (1 - t_s)) - 2 - np.log(fit.threshold / (1 - fit.threshold))) < 0.3
    assert t_s > 0.8 and f"threshold {t_s:g}, dilate {d_s} px" in text
    _, grid_s = _val_grid(shifted, FIT_THRESHOLDS, 2)
    assert grid_s.max() == pytest.approx(grid.max(), abs=0.02)
    assert grid_s.max() > grid_s[FIT_THRESHOLDS.index(0.5)].max() + 0.02  # the default threshold no longer fits


def test_fit_rule_refuses_bad_input_in_one_line(student, tmp_path, capsys):
    for args, says in (([tmp_path / "nowhere"], "nowhere: checkpoint not found"),
                       ([student / "checkpoints" / "last.ckpt"], "give the run folder"),
                       ([student, "--max-dilate", -1], "--max-dilate"),
                       ([student, "--max-dilate", 65], "--max-dilate"),
                       ([student, "--threshold", 1.5], "--threshold")):
        code, text = invoke(["student", "fit-rule", *args], capsys)
        one_line_refusal(code, text, says)
    run = tmp_path / "nodata_dir"
    shutil.copytree(student, run, ignore=shutil.ignore_patterns("checkpoints", "logs", "tensorboard"))
    info = json.loads((run / "student.json").read_text())
    info["config"]["data"] = str(tmp_path / "gone")
    (run / "student.json").write_text(json.dumps(info))
    code, text = invoke(["student", "fit-rule", run], capsys)
    one_line_refusal(code, text, "gone")
    assert "rule" not in json.loads((run / "student.json").read_text())


# ------------------------------------------------------------------------------------------------ consumers
@pytest.fixture(scope="module")
def run_at_d(student, tmp_path_factory):
    """A copy of the shared student run whose recorded rule dilates by D pixels."""
    run = tmp_path_factory.mktemp("run_d") / "run"
    shutil.copytree(student, run)
    info = json.loads((run / "student.json").read_text())
    info["rule"] = {"threshold": 0.5, "dilate": D}
    (run / "student.json").write_text(json.dumps(info, indent=2))
    return run


def _masks(model, feats, ids, threshold=0.5, dilate=D):
    """The rule by hand: each chip's above-threshold pixels, dilated by scipy, nodata cleared."""
    out = {}
    for c in ids:
        refl = read_chip(feats / c)
        with torch.no_grad():
            z = model(torch.from_numpy(normalise(refl[None])))[0, 0]
        z = z.numpy() if hasattr(z, "numpy") else np.asarray(z)
        out[c] = (_scipy(z > logit_threshold(threshold), dilate) & ~nodata_mask(refl)).astype(np.uint8)
    return out


def test_student_predict_applies_the_recorded_dilation_unless_told_otherwise(run_at_d, small_data, tmp_path,
                                                                             capsys):
    test = resolve_split(small_data, "test")
    ids = test.chip_ids()
    model = load_student(run_at_d)
    at_d, at_0 = _masks(model, test.features_dir, ids), _masks(model, test.features_dir, ids, dilate=0)
    assert sum(int((at_d[c] != at_0[c]).sum()) for c in ids) > 0
    for args, want in (([], at_d), (["--dilate", 0], at_0)):
        out = tmp_path / f"pred{len(args)}"
        code, text = invoke(["student", "predict", "--model", run_at_d, "--features", test.features_dir,
                             "--out", out, *args], capsys)
        assert code == 0, text
        for c in ids:
            assert np.array_equal(read_mask(out / f"{c}.tif"), want[c]), (args, c)
    code, text = invoke(["student", "predict", "--model", run_at_d, "--features", test.features_dir,
                         "--out", tmp_path / "bad", "--dilate", -1], capsys)
    one_line_refusal(code, text, "--dilate")


@pytest.mark.parametrize("shape,tile,overlap,dilate", [((250, 301), 100, 30, 5), ((260, 260), 64, 0, 7),
                                                       ((150, 170), 32, 8, 30), ((600, 90), 64, 16, 4)])
def test_a_scene_predicted_in_tiles_is_the_whole_arrays_rule_with_its_dilation(small_data, tmp_path, shape, tile,
                                                                                overlap, dilate):
    """predict-scene's mask of a scene in tiles (seams with and without overlap, a dilation wider than a strip of
    tiles, a scene taller than one output band of 512 rows) equals the rule applied to the whole array at once:
    a model that sees one pixel gives every tile the whole array's logit there, so any difference is the
    stitching's."""
    import tifffile

    from cloudkd.data.normalise import dn_to_reflectance
    from cloudkd.onboard.scene import predict_scene

    h, w = shape
    scene = np.tile(scene_from_chips(small_data, 3), (1, 3, 1))[:, :h, :w].copy()
    scene[:, :20, -25:] = 0  # a nodata corner
    coef = np.array([0.3, -0.2, 0.5, 0.4], np.float32)[:, None, None]
    cut = float(np.quantile((normalise(dn_to_reflectance(scene)) * coef).sum(axis=0), 0.8))

    def pixelwise(x):  # logits far from the threshold: the blend's rounding cannot flip a pixel
        return np.where((x * coef).sum(axis=1, keepdims=True) > cut, 4.0, -4.0).astype(np.float32)

    d = write_band_files(tmp_path / "scene", scene, rowsperstrip=16)
    outs = {}
    for px in (0, dilate):
        r = predict_scene(d, tmp_path / f"mask{px}.tif", pixelwise, tile=tile, overlap=overlap, batch_size=3,
                          threshold=0.5, dilate=px, progress=False)
        outs[px] = tifffile.imread(tmp_path / f"mask{px}.tif")
    z = pixelwise(normalise(dn_to_reflectance(scene))[None])
    whole = masks_from_logits(z, 0.5, (scene == 0).all(axis=0)[None], dilate)[0]
    assert np.array_equal(outs[dilate], whole)
    assert np.array_equal(outs[dilate], (_scipy(z[0, 0] > 0, dilate) & ~(scene == 0).all(axis=0)).astype(np.uint8))
    assert outs[dilate][:20, -25:].max() == 0 and r["tiles"] > 1
    assert (outs[dilate] != outs[0]).sum() > 0.02 * h * w  # the dilation is there, not a blank comparison


@pytest.fixture(scope="module")
def export_at_d(run_at_d, tmp_path_factory):
    """`cloudkd onboard export` of run_at_d with no rule given: fp32 (dynamic) and fp32_b1 (96 px)."""
    from cloudkd.onboard.export import export

    out = tmp_path_factory.mktemp("export_d") / "exp"
    export(run_at_d, out, size=SIZE, int8=False, measure_memory=False)
    return out


def test_the_recorded_dilation_reaches_the_onnx_metadata_and_the_models_loaded_from_it(run_at_d, export_at_d,
                                                                                      small_data, tmp_path):
    from cloudkd.common.onnx import OnnxModel, onnx_rule, ort_session
    from cloudkd.evaluate.realchips import onnx_method, student_method
    from cloudkd.student.predictor import load_predictor

    assert json.loads((export_at_d / "export.json").read_text())["dilate"] == D
    for name in ("model_fp32.onnx", "model_fp32_b1.onnx"):
        assert onnx_rule(ort_session(export_at_d / name)) == (0.5, D)
        assert recorded_rule(export_at_d / name) == (0.5, D) and load_predictor(export_at_d / name).dilate == D
    assert load_predictor(run_at_d).dilate == D and load_predictor(run_at_d).threshold == 0.5
    test = resolve_split(small_data, "test")
    ids = test.chip_ids()
    for method, model in ((student_method(run_at_d), load_student(run_at_d)),
                          (onnx_method(export_at_d / "model_fp32.onnx"), OnnxModel(export_at_d / "model_fp32.onnx"))):
        want = _masks(model, test.features_dir, ids)
        method.predict(test.features_dir, tmp_path / method.name)
        for c in ids:
            assert np.array_equal(read_mask(tmp_path / method.name / f"{c}.tif"), want[c]), (method.name, c)
    # an export told another dilation records that one
    from cloudkd.onboard.export import export

    export(run_at_d, tmp_path / "exp0", size=SIZE, int8=False, measure_memory=False, dilate=0)
    assert recorded_rule(tmp_path / "exp0" / "model_fp32.onnx") == (0.5, 0)


def test_bench_and_predict_scene_apply_the_recorded_dilation(run_at_d, export_at_d, small_data, tmp_path, capsys):
    import rasterio
    import tifffile

    from cloudkd.common.metrics import Confusion, confusion
    from cloudkd.onboard.bench import run_worker
    from cloudkd.onboard.scene import load_predictor, predict_scene

    test = resolve_split(small_data, "test")
    ids = test.chip_ids()
    want = _masks(load_student(run_at_d), test.features_dir, ids)
    conf = Confusion()
    for c in ids:
        conf += confusion(want[c], read_label(test.labels_dir / f"{c}.tif") > 0)
    row = run_worker("s", "student", str(run_at_d), str(test.features_dir), str(test.labels_dir), 1, 4, 1)
    assert row["dilate"] == D and row["jaccard"] == pytest.approx(conf.jaccard(), abs=1e-9)
    assert run_worker("s", "student", str(run_at_d), str(test.features_dir), str(test.labels_dir), 1, 4, 1,
                      dilate=0)["jaccard"] != pytest.approx(conf.jaccard(), abs=1e-6)

    chip = test.chip_dir(ids[0])
    for name, model in (("run", run_at_d), ("onnx", export_at_d / "model_fp32.onnx")):
        lib = {}
        for px in (D, 0):
            predict_scene(chip, tmp_path / f"{name}{px}.tif", load_predictor(model), tile=64, overlap=16, dilate=px,
                          progress=False)
            lib[px] = tifffile.imread(tmp_path / f"{name}{px}.tif")
        assert (lib[D] != lib[0]).any()
        out = tmp_path / f"{name}.tif"
        code, text = invoke(["onboard", "predict-scene", chip, "--model", model, "--out", out, "--tile", 64,
                             "--overlap", 16], capsys)
        assert code == 0, text
        assert np.array_equal(tifffile.imread(out), lib[D]), name
        with rasterio.open(out) as ds:
            assert ds.tags()["CLOUDKD_DILATE"] == str(D)
        code, text = invoke(["onboard", "predict-scene", chip, "--model", model, "--out", tmp_path / "o0.tif",
                             "--tile", 64, "--overlap", 16, "--dilate", 0, "--force"], capsys)
        assert code == 0 and np.array_equal(tifffile.imread(tmp_path / "o0.tif"), lib[0]), text


def test_pack_ships_the_recorded_dilation_unless_told_otherwise(run_at_d, student, tmp_path):
    import zipfile

    from cloudkd.submission.pack import pack

    def shipped(run, **kw):
        z = tmp_path / f"s{len(list(tmp_path.iterdir()))}.zip"
        pack(run, z, chip_size=SIZE, **kw)
        return json.loads(zipfile.ZipFile(z).read("assets/config.json"))["dilate"]

    assert shipped(run_at_d) == D and shipped(run_at_d, dilate=1) == 1 and shipped(student) == 0
    with pytest.raises(ValueError):
        shipped(run_at_d, dilate=-1)


def test_pack_command_takes_dilate(run_at_d, tmp_path, capsys):
    import zipfile

    for extra, want in (([], D), (["--dilate", 2], 2)):
        z = tmp_path / f"cli{want}.zip"
        code, text = invoke(["submission", "pack", "--checkpoint", run_at_d, "--out", z, "--chip-size", SIZE,
                             *extra], capsys)
        assert code == 0, text
        assert json.loads(zipfile.ZipFile(z).read("assets/config.json"))["dilate"] == want
        assert f"dilate {want} px" in text
    code, text = invoke(["submission", "pack", "--checkpoint", run_at_d, "--out", tmp_path / "x.zip", "--dilate",
                         -1], capsys)
    one_line_refusal(code, text, "--dilate")


def test_packed_main_py_under_the_runtime_applies_the_recorded_dilation(run_at_d, small_data, runtime_python,
                                                                        tmp_path):
    """main.py + the packed infer.py under Python 3.9 / torch 1.8 / numpy 1.20 write the library's dilated masks
    (nodata wedges cleared after the dilation) and say so in the run summary."""
    from PIL import Image

    from cloudkd.student.predict import predict_folder
    from cloudkd.submission.emulate import runtime_test
    from cloudkd.submission.pack import pack

    z = tmp_path / "submission.zip"
    pack(run_at_d, z, tta=True, batch_size=3, chip_size=SIZE)
    test = resolve_split(small_data, "test")
    wedges = wedged_copy(test, tmp_path / "wedged")
    feats = tmp_path / "wedged" / "test_features"
    v = runtime_test(z, tmp_path / "wedged", keep=tmp_path / "root", echo=False, python=runtime_python)
    assert v["ok"], (v["reasons"], v["log"][-2000:])
    assert v["versions"]["python"].startswith("3.9.") and v["versions"]["torch"].split("+")[0] == "1.8.0"
    s = v["summary"]
    assert s["dilate"] == D and s["threshold"] == 0.5 and s["tta"] is True and f"dilate {D} px" in v["log"]
    lib = {px: predict_folder(load_student(run_at_d), feats, tmp_path / f"lib{px}", tta=True, batch_size=3,
                              dilate=px, progress=False) for px in (D, 0)}
    assert lib[D]["n_chips"] == len(wedges)
    differ = 0
    for cid, wedge in wedges.items():
        mask = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(mask, read_mask(tmp_path / f"lib{D}" / f"{cid}.tif")), cid
        assert mask[wedge].max() == 0, cid
        differ += int((mask != read_mask(tmp_path / "lib0" / f"{cid}.tif")).sum())
    assert differ > 0


def test_every_command_that_makes_masks_from_a_model_takes_its_recorded_dilation():
    """--dilate is None (the model's recorded dilation) on every command that makes masks from a model and takes
    --dilate (the audit does not apply the dilation yet: its suspicion weighs each pixel by the model's own
    probability against the threshold)."""
    import typer

    from cloudkd.cli import app

    root = typer.main.get_command(app)
    for path in (("student", "predict"), ("predict",), ("onboard", "export"), ("export",),
                 ("onboard", "predict-scene"), ("predict-scene",), ("onboard", "bench"), ("bench",)):
        cmd = root
        for name in path:
            cmd = cmd.commands[name]
        opt = next(p for p in cmd.params if "--dilate" in getattr(p, "opts", ()))
        assert opt.default is None, (path, opt.default)
