"""The real-chip benchmark on the four labelled real chips (skipped when absent): every method it is given is
predicted, scored with the leaderboard metric and drawn."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cloudkd.baselines.threshold import ThresholdModel
from cloudkd.data import read_label, read_mask
from cloudkd.evaluate.realchips import (method_folder, onnx_method, peer_method, run_real_bench, student_method,
                                        threshold_method)
from cloudkd.common.metrics import Confusion, confusion
from cloudkd.teacher import peer

REPO = Path(__file__).resolve().parents[2]
REAL_LABELLED = Path(os.environ.get("CLOUDKD_REAL_LABELLED", REPO.parent / "shared" / "data" / "real_labelled"))
#: official label cloud fractions (the shared folder's README)
FRACTIONS = {"adwp": 0.479, "adwu": 0.637, "adwz": 1.0, "adxp": 1.0}


@pytest.fixture(scope="module")
def real_labelled():
    if not (REAL_LABELLED / "train_labels").is_dir():
        pytest.skip(f"labelled real chips not found at {REAL_LABELLED}")
    return REAL_LABELLED


def _by_hand(pred_dir: Path, root: Path) -> float:
    total = Confusion()
    for lab in sorted((root / "train_labels").glob("*.tif")):
        total += confusion(read_mask(pred_dir / lab.name), read_label(lab))
    return total.jaccard()


def test_real_bench_reports_every_method_it_was_given(real_labelled, student, tmp_path):
    from cloudkd.onboard.export import export_onnx
    from cloudkd.student.runs import load_student

    bright = tmp_path / "bright.json"
    ThresholdModel(0.25, float("inf")).save(bright)
    onnx = export_onnx(load_student(student), tmp_path / "student.onnx")
    methods = [threshold_method(bright, "bright"), student_method(student, "student"), onnx_method(onnx, "onnx")]
    if peer.available():
        methods.append(peer_method())
    out = tmp_path / "bench"
    r = run_real_bench(real_labelled, methods, out, progress=False)

    names = [m.name for m in methods]
    assert list(r.summary.method) == names
    assert sorted(r.per_chip.chip_id.unique()) == sorted(FRACTIONS) and len(r.per_chip) == 4 * len(names)
    for col in ("iou", "precision", "recall", "cloud_frac_label", "cloud_frac_pred"):
        assert r.per_chip[col].notna().any(), col
    for cid, frac in FRACTIONS.items():
        assert r.per_chip[r.per_chip.chip_id == cid].cloud_frac_label.iloc[0] == pytest.approx(frac, abs=1e-3)
    # each global Jaccard is the leaderboard metric of the masks written, recomputed here from the files
    for row in r.summary.itertuples():
        folder = method_folder(out, row.method)
        assert sorted(p.stem for p in folder.glob("*.tif")) == sorted(FRACTIONS)
        assert row.jaccard == pytest.approx(_by_hand(folder, real_labelled), abs=1e-12)
        per = r.per_chip[r.per_chip.method == row.method]
        assert row.jaccard == pytest.approx(per.tp.sum() / (per.tp + per.fp + per.fn).sum())
    # the bare brightness rule on these chips: every labelled pixel brighter than 0.25 is cloud (0.733 measured)
    assert r.summary.set_index("method").jaccard["bright"] == pytest.approx(0.733, abs=0.002)
    # the exported model predicts what the PyTorch student predicts
    j = r.summary.set_index("method").jaccard
    assert j["onnx"] == pytest.approx(j["student"], abs=2e-3)
    saved = pd.read_csv(out / "summary.csv")
    assert list(saved.method) == names and (out / "per_chip.csv").is_file()
    # cloud by brightness: the label rows count every labelled pixel once (these chips have no nodata), and the
    # bare brightness rule (cloud iff mean visible reflectance > 0.25) finds none of the labelled cloud below 0.2
    # and all of it above 0.35; each method's band counts add up to its global recall and precision
    bands = pd.read_csv(out / "bands.csv")
    assert list(bands.band[bands.method == "label"]) == ["<0.2", "0.2-0.35", "0.35-0.6", ">0.6"]
    n_label = sum(int(read_label(p).sum()) for p in (real_labelled / "train_labels").glob("*.tif"))
    assert bands[bands.method == "label"].label_px.sum() == n_label
    assert bands[bands.method == "label"][["recall", "precision"]].isna().all().all()  # the labels alone: no rates
    rule = bands[bands.method == "bright"].set_index("band")
    assert rule.recall["<0.2"] == 0 and rule.pred_px["<0.2"] == 0 and np.isnan(rule.precision["<0.2"])
    assert rule.recall["0.35-0.6"] == 1 and rule.recall[">0.6"] == 1 and 0 < rule.recall["0.2-0.35"] < 1
    for row in r.summary.itertuples():
        b = bands[bands.method == row.method]
        hits = (b.recall.fillna(0) * b.label_px).sum()
        assert hits / b.label_px.sum() == pytest.approx(row.recall, abs=1e-9)
        assert hits / b.pred_px.sum() == pytest.approx(row.precision, abs=1e-9)
    assert (out / "bands.png").is_file()
    with Image.open(r.figure) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 200


#: pixel kinds of the hand-made case: DN of B02, B03, B04, B08 (reflectance = DN / 10000)
KINDS = {"dark": (800, 900, 1000, 2000), "deck": (2500, 2600, 2700, 2800), "cloud": (5000, 5000, 5000, 5200),
         "sand": (3000, 4000, 5000, 5500), "top": (7000, 7000, 7000, 7000), "nodata": (0, 0, 0, 0)}


def _hand_made_case(root: Path):
    """Two 16x16 chips of the pixel kinds above, with labels: cloud decks, cloud and bright tops labelled, part of
    the sand labelled by mistake, cloud labelled over nodata."""
    from conftest import make_dataset

    def chip(layout):
        dn = np.zeros((4, 16, 16), np.uint16)
        for kind, (rows, cols) in layout.items():
            dn[:, rows, cols] = np.array(KINDS[kind], np.uint16)[:, None, None]
        return dn

    a = chip({"dark": (slice(None), slice(0, 4)), "deck": (slice(None), slice(4, 8)),
              "cloud": (slice(None), slice(8, 12)), "sand": (slice(None), slice(12, 16))})
    b = chip({"top": (slice(0, 8), slice(None)), "nodata": (slice(8, 12), slice(None)),
              "dark": (slice(12, 16), slice(None))})
    la, lb = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    la[:, 4:12] = 1
    la[:8, 12:] = 1
    lb[:12] = 1
    return make_dataset(root, {"aaaa": a, "bbbb": b}, "train", {"aaaa": la, "bbbb": lb})


def test_real_bench_command_scores_the_rule_and_counts_bands_as_computed_here(tmp_path, capsys):
    """`evaluate real-bench --threshold MODEL` on a hand-made case: the rule's row in summary.csv is the global
    Jaccard (and precision, recall) of the rule's masks computed here from the chips' numbers, per_chip.csv holds
    each chip's counts, and bands.csv the labelled cloud, recall, predicted cloud and precision per band of mean
    visible reflectance, nodata pixels left out, all recomputed here."""
    from conftest import invoke, one_line_refusal

    root = _hand_made_case(tmp_path / "data")
    rule = tmp_path / "rule.json"
    ThresholdModel(0.3, 0.2).save(rule)
    code, text = invoke(["evaluate", "real-bench", root, "--out", tmp_path / "o", "--threshold", rule, "--peer", "no"],
                        capsys)
    assert code == 0, text
    # the rule by hand: cloud where the mean visible reflectance > 0.3 and the whiteness < 0.2
    inter = union = pred_px = label_px = 0
    per_band = {name: np.zeros(3, int) for name in ("<0.2", "0.2-0.35", "0.35-0.6", ">0.6")}
    counts = {}
    for cid in ("aaaa", "bbbb"):
        refl = np.stack([tifffile.imread(root / "train_features" / cid / f"{b}.tif") for b in
                         ("B02", "B03", "B04", "B08")]).astype(np.float64) / 10000
        vis = refl[:3].mean(0)
        white = np.abs(refl[:3] - vis).sum(0) / np.where(vis > 0, vis, np.nan)
        pred = (vis > 0.3) & (white < 0.2)
        lab = tifffile.imread(root / "train_labels" / f"{cid}.tif").astype(bool)
        counts[cid] = (int((pred & lab).sum()), int((pred & ~lab).sum()), int((~pred & lab).sum()))
        inter, union = inter + int((pred & lab).sum()), union + int((pred | lab).sum())
        pred_px, label_px = pred_px + int(pred.sum()), label_px + int(lab.sum())
        valid = refl.any(0)
        for name, lo, hi in (("<0.2", 0, 0.2), ("0.2-0.35", 0.2, 0.35), ("0.35-0.6", 0.35, 0.6), (">0.6", 0.6, 9)):
            inside = valid & (vis >= lo) & (vis < hi)
            per_band[name] += [(lab & inside).sum(), (lab & pred & inside).sum(), (pred & inside).sum()]
    # by hand: cloud 64 + tops 128 px predicted; labelled: decks 64, cloud 64, sand 32, tops 128, nodata 64
    assert (inter, union, pred_px, label_px) == (192, 352, 192, 352)
    (row,) = pd.read_csv(tmp_path / "o" / "summary.csv").to_dict("records")
    assert row["method"] == "thresholding"
    assert row["jaccard"] == pytest.approx(inter / union, abs=1e-12)
    assert (row["precision"], row["recall"]) == pytest.approx((inter / pred_px, inter / label_px))
    chip = pd.read_csv(tmp_path / "o" / "per_chip.csv").set_index("chip_id")
    assert {c: (chip.tp[c], chip.fp[c], chip.fn[c]) for c in counts} == counts
    bands = pd.read_csv(tmp_path / "o" / "bands.csv")
    got = bands[bands.method == row["method"]].set_index("band")
    for name, (lab_n, hit, pred_n) in per_band.items():
        assert got.label_px[name] == lab_n and got.pred_px[name] == pred_n, name
        assert got.recall[name] == pytest.approx(hit / lab_n) if lab_n else np.isnan(got.recall[name])
        assert got.precision[name] == pytest.approx(hit / pred_n) if pred_n else np.isnan(got.precision[name])
    # by hand: the decks (0.26) are labelled and missed, the sand (0.4, coloured) is not cloud, nodata is left out
    assert got.recall["0.2-0.35"] == 0 and got.label_px["0.2-0.35"] == 64 and got.label_px["<0.2"] == 0
    assert got.recall["0.35-0.6"] == pytest.approx(64 / 96) and got.precision["0.35-0.6"] == 1.0
    assert got.recall[">0.6"] == 1.0 and got.label_px.sum() == 288  # 352 labelled, 64 of them on nodata
    code, text = invoke(["evaluate", "real-bench", root, "--out", tmp_path / "p", "--threshold", rule, "--peer",
                         "maybe"], capsys)
    one_line_refusal(code, text, "--peer")


def test_real_bench_refuses_unlabelled_data_and_no_methods(small_data, tmp_path):
    from cloudkd.data import DataError

    with pytest.raises(DataError, match="at least one method"):
        run_real_bench(small_data, [], tmp_path / "x")
    unl = tmp_path / "unl"
    (unl / "test_features").mkdir(parents=True)
    bright = tmp_path / "b.json"
    ThresholdModel(0.25, float("inf")).save(bright)
    with pytest.raises(DataError, match="needs labels"):
        run_real_bench(unl / "test_features", [threshold_method(bright)], tmp_path / "y")


@pytest.mark.skipif(not peer.available(), reason="ukis-csmask (optional) is not installed")
def test_peer_teacher_adapter_agrees_with_the_peer_as_shipped(real_labelled):
    import torch

    from cloudkd.data import normalise, read_chip
    from cloudkd.student.teachers import load_online_teacher

    teacher = load_online_teacher(onnx="ukis-csmask")
    refl = read_chip(real_labelled / "train_features" / "adwu")
    z = teacher.logits(torch.from_numpy(normalise(refl))[None])
    assert z.shape == (1, 1, 512, 512)
    ours, shipped = (z[0, 0] > 0).numpy(), peer.predict_chip(refl).astype(bool)
    assert (ours == shipped).mean() > 0.95  # it tiles without overlap; the package blends overlapping tiles
    assert 0.5 < ours.mean() < 0.9


def test_band_counts_by_hand():
    """Six pixels of known brightness (mean of B02-B04), one nodata: counts per band counted by hand."""
    from cloudkd.evaluate.bands import band_counts, band_rows, visible_brightness

    vis = np.array([0.1, 0.25, 0.3, 0.5, 0.9, 0.0], np.float32)  # bands 0, 1, 1, 2, 3 and nodata
    refl = np.stack([vis, vis, vis, np.full(6, 0.4, np.float32)])[:, None, :]
    refl[:, 0, 5] = 0.0
    label = np.array([[1, 1, 0, 1, 1, 1]], bool)
    pred = np.array([[0, 1, 1, 0, 1, 1]], bool)
    bright, valid = visible_brightness(refl)
    assert valid.tolist() == [[True] * 5 + [False]]
    c = band_counts(bright, valid, label, pred)
    assert c.tolist() == [[1, 0, 0, 0], [1, 1, 2, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    rows = {r["band"]: r for r in band_rows(c, method="m")}
    assert rows["<0.2"]["recall"] == 0 and np.isnan(rows["<0.2"]["precision"])
    assert rows["0.2-0.35"]["recall"] == 1 and rows["0.2-0.35"]["precision"] == 0.5
    assert rows[">0.6"]["label_share"] == 0.25
