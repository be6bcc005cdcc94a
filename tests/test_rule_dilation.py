"""The prediction rule's dilation (issue 30 item 4): the above-threshold mask grown by a margin learnt on the
generated validation split (`cloudkd student fit-rule`), applied by every consumer of the one rule."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from cloudkd.common.infer import (clear_nodata, dilate_masks, logit_threshold, masks_from_logits,
                                  masks_from_probabilities, nodata_mask, predict_masks)
from cloudkd.data import normalise, read_chip, read_label, read_mask, resolve_split
from cloudkd.student.runs import load_student, recorded_dilation, recorded_rule, run_rule

from conftest import invoke, one_line_refusal

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
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 1, 3, padding=1).eval()
    x = torch.randn(2, 4, 16, 16)
    nd = np.zeros((2, 16, 16), bool)
    nd[1, 9:, :] = True
    with torch.no_grad():
        above = (model(x)[:, 0] > logit_threshold(0.8)).numpy()
    want = _scipy(above, D) & ~nd
    got = predict_masks(model, x, nd, 0.8, dilate=D)
    assert np.array_equal(got, want.astype(np.uint8)) and (got != predict_masks(model, x, nd, 0.8)).any()


# ------------------------------------------------------------------------------------------------ the record
def test_a_run_without_a_recorded_dilation_reads_as_none(student, tmp_path):
    info = json.loads((student / "student.json").read_text())
    assert "rule" not in info
    assert run_rule(info) == (0.5, 0) and recorded_rule(student) == (0.5, 0) and recorded_dilation(student) == 0
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


def test_fit_rule_records_the_dilation_of_the_best_validation_jaccard(student, tmp_path, capsys):
    """fit-rule at threshold 0.6 (where this briefly trained student's masks are tighter than its labels) scores
    every dilation 0..8 on the run's validation chips and records the best; recomputed here with scipy."""
    run = tmp_path / "run"
    shutil.copytree(student, run)
    code, text = invoke(["student", "fit-rule", run, "--max-dilate", 8, "--threshold", 0.6, "--batch", 4], capsys)
    assert code == 0, text
    info = json.loads((run / "student.json").read_text())
    rule = info["rule"]
    # the global Jaccard of every dilation, recomputed here: the run's validation chips, its student.pt, scipy
    index = _val_chips(run)
    net = load_student(run)
    inter, union = np.zeros(9), np.zeros(9)
    for r in index.itertuples():
        refl = read_chip(r.features)
        with torch.no_grad():
            z = net(torch.from_numpy(normalise(refl[None])))[0, 0].numpy()
        lab = read_label(r.label) > 0
        for d in range(9):
            pred = _scipy(z > np.log(0.6 / 0.4), d) & ~nodata_mask(refl)
            inter[d] += (pred & lab).sum()
            union[d] += (pred | lab).sum()
    want = inter / union
    assert rule["fitted_on"]["n_chips"] == len(index) and rule["threshold"] == 0.6
    assert [rule["val_jaccard"][str(d)] for d in range(9)] == pytest.approx(want, abs=1e-12)
    best = int(np.flatnonzero(want == want.max())[0])
    assert rule["dilate"] == best and recorded_rule(run) == (0.6, best)
    assert 0 < best < 8  # a margin helps here, and not without end: not the trivial choice at either end
    assert f"dilate {best} px" in text and f"{want[0]:.4f} undilated -> {want[best]:.4f}" in text
    # everything else of the record is as training wrote it
    before = json.loads((student / "student.json").read_text())
    assert {k: v for k, v in info.items() if k != "rule"} == before


def test_fit_rule_scores_the_runs_own_validation_and_ties_go_to_the_smaller_dilation(student, tmp_path):
    from cloudkd.student.rule import best_dilation, fit_rule

    assert best_dilation({0: 0.5, 1: 0.7, 2: 0.7, 3: 0.6}) == 1 and best_dilation({0: 0.7, 1: 0.7}) == 0
    run = tmp_path / "run"
    shutil.copytree(student, run, ignore=shutil.ignore_patterns("checkpoints", "logs", "tensorboard"))
    fit = fit_rule(run, max_dilate=2, progress=False)
    assert recorded_rule(run) == (0.5, fit.dilate) and fit.jaccard[fit.dilate] == max(fit.jaccard.values())
    # undilated at the training threshold: the run's own validation score (Lightning's, of the same weights)
    info = json.loads((run / "student.json").read_text())
    assert fit.jaccard[0] == pytest.approx(info["val_jaccard"], abs=1e-6)


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
