"""Thresholding baseline: exact fit, planted rule recovery, submission-format output, calibration guard."""

import math

import numpy as np
import pytest

from cloudkd.baselines.threshold import (ThresholdModel, best_brightness_cut, fit_threshold, predict_folder,
                                         spectral_features)
from cloudkd.data import DataError, load_index, read_label, resolve_split
from cloudkd.evaluate.scoring import score_folder

from conftest import make_dataset


def test_best_cut_matches_brute_force():
    rng = np.random.default_rng(0)
    b = np.round(rng.random(300), 2)  # many ties
    y = rng.random(300) < b           # brighter -> more likely cloud
    n_pos = int(y.sum()) + 7          # 7 cloud pixels outside the candidates (always missed)
    jac, t = best_brightness_cut(b, y, n_pos)
    best = max(((y & (b > c)).sum() / (n_pos + (~y & (b > c)).sum()), c) for c in np.unique(b) - 1e-9)
    assert jac == pytest.approx(best[0])
    pred = b > t
    assert (y & pred).sum() / (n_pos + (~y & pred).sum()) == pytest.approx(jac)


def test_features():
    refl = np.zeros((4, 1, 3), np.float32)
    refl[:, 0, 0] = [0.5, 0.5, 0.5, 0.4]    # white cloud
    refl[:, 0, 1] = [0.2, 0.28, 0.36, 0.4]  # reddish desert
    b, w = spectral_features(refl)
    assert b[0, 0] == pytest.approx(0.5) and w[0, 0] == pytest.approx(0.0)
    assert w[0, 1] == pytest.approx((0.08 + 0 + 0.08) / 0.28, rel=1e-5)
    assert math.isinf(w[0, 2])  # nodata


def test_fit_recovers_planted_rule(tmp_path):
    """Cloud = bright and white; a bright red desert and dark ground are not: the fit must separate them."""
    rng = np.random.default_rng(1)
    chips, labels = {}, {}
    for i in range(4):
        kind = rng.integers(0, 3, (32, 32))
        refl = np.empty((4, 32, 32), np.float32)
        spectra = {0: (0.05, 0.07, 0.05, 0.3), 1: (0.25, 0.33, 0.42, 0.45), 2: (0.6, 0.57, 0.55, 0.5)}
        for k, s in spectra.items():
            refl[:, kind == k] = np.asarray(s, np.float32)[:, None]
        refl *= rng.uniform(0.95, 1.05, refl.shape).astype(np.float32)
        chips[f"c{i:03d}"] = (refl * 10000).astype(np.uint16)
        labels[f"c{i:03d}"] = (kind == 2).astype(np.uint8)
    root = make_dataset(tmp_path, chips, labels=labels)
    idx = load_index(resolve_split(root))
    m = fit_threshold(idx.features, idx.label, stride=1)
    assert m.fit_jaccard == pytest.approx(1.0)
    assert 0.35 < m.brightness_min < 0.55 or m.whiteness_max < 0.5
    predict_folder(m, root / "train_features", tmp_path / "pred")
    rep = score_folder(tmp_path / "pred", root / "train_labels")
    assert rep.jaccard == pytest.approx(1.0)


def test_save_load_round_trip(tmp_path):
    m = ThresholdModel(0.2, math.inf, fit_jaccard=0.5, n_train_chips=3, sample_stride=4)
    m.save(tmp_path / "t.json")
    assert ThresholdModel.load(tmp_path / "t.json") == m
    (tmp_path / "bad.json").write_text('{"method": "other"}')
    with pytest.raises(DataError, match=r"bad\.json: not a brightness-whiteness threshold model"):
        ThresholdModel.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="cannot read"):
        ThresholdModel.load(tmp_path / "missing.json")


def test_no_cloud_in_training_labels(tmp_path):
    root = make_dataset(tmp_path, {"aaaa": np.full((4, 8, 8), 500, np.uint16)},
                        labels={"aaaa": np.zeros((8, 8), np.uint8)})
    idx = load_index(resolve_split(root))
    with pytest.raises(DataError, match="no cloud pixel"):
        fit_threshold(idx.features, idx.label)


def test_generated_benchmark_is_hard_for_thresholding(tmp_path):
    """Calibration guard: on held-out locations thresholding is useful but far from perfect. Chips of 256 px:
    the annotator's margins (a median of 12 px) would cover most of a 96-px chip and favour 'all cloud'."""
    from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

    data = tmp_path / "d"
    synthesize(data, SynthConfig(n_train=24, n_test=12, size=256, seed=1), workers=2, progress=False)
    train = load_index(resolve_split(data, "train"))
    m = fit_threshold(train.features, train.label, stride=2)
    test = resolve_split(data, "test")
    n = predict_folder(m, test.features_dir, tmp_path / "pred")
    assert n == len(test.chip_ids())
    rep = score_folder(tmp_path / "pred", test.labels_dir)
    assert rep.ok
    assert 0.45 < rep.jaccard < 0.88, rep.jaccard
    # and better than calling everything cloud, whose Jaccard and precision are both the cloud fraction: a higher
    # Jaccard, and a precision clearly above it (on 12 chips the cloud fraction itself moves by 0.1 with the set,
    # so the margin is asked of the precision; on the demo's 80 test chips the Jaccard margin is 0.16: 0.673
    # against 0.512, data/README.md)
    all_cloud = sum(read_label(p).sum() for p in test.labels_dir.glob("*.tif")) / (n * 256 * 256)
    assert rep.jaccard > all_cloud
    assert rep.total.precision > all_cloud + 0.1, (rep.total.precision, all_cloud)
