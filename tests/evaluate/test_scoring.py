"""Folder scoring: the leaderboard metric over files, refusals, per-chip and per-location tables."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from cloudkd.data import DataError, write_mask
from cloudkd.common.metrics import EmptyUnionError
from cloudkd.evaluate.scoring import score_folder


@pytest.fixture
def case(tmp_path):
    """Three chips at two locations with hand-picked masks."""
    labels, preds = tmp_path / "train_labels", tmp_path / "pred"
    rng = np.random.default_rng(0)
    truth = {c: (rng.random((32, 32)) > 0.5).astype(np.uint8) for c in ("aaaa", "bbbb", "cccc")}
    guess = {c: (rng.random((32, 32)) > 0.5).astype(np.uint8) for c in truth}
    for c in truth:
        write_mask(labels / f"{c}.tif", truth[c])
        write_mask(preds / f"{c}.tif", guess[c])
    pd.DataFrame({"chip_id": ["aaaa", "bbbb", "cccc"], "location": ["X", "X", "Y"],
                  "datetime": ["2020-01-01T00:00:00Z"] * 3}).to_csv(tmp_path / "train_metadata.csv", index=False)
    return tmp_path, truth, guess


def _jac(pairs):
    i = sum(int((p & t).sum()) for p, t in pairs)
    u = sum(int((p | t).sum()) for p, t in pairs)
    return i / u


def test_global_jaccard_and_tables(case):
    root, truth, guess = case
    rep = score_folder(root / "pred", root / "train_labels")
    assert rep.ok and rep.n_chips == 3
    assert rep.jaccard == pytest.approx(_jac([(guess[c], truth[c]) for c in truth]))
    chip = rep.per_chip.set_index("chip_id")
    assert chip.loc["bbbb", "iou"] == pytest.approx(_jac([(guess["bbbb"], truth["bbbb"])]))
    assert chip.loc["cccc", "location"] == "Y"  # metadata found beside train_labels
    loc = rep.per_location.set_index("location")
    assert loc.loc["X", "jaccard"] == pytest.approx(_jac([(guess[c], truth[c]) for c in ("aaaa", "bbbb")]))
    assert loc.loc["X", "n_chips"] == 2
    s = rep.summary()
    assert {"jaccard", "intersection", "union", "n_chips", "missing"} <= set(s)
    assert s["intersection"] == sum(int((guess[c] & truth[c]).sum()) for c in truth)


def test_subset_of_chips(case):
    root, truth, guess = case
    rep = score_folder(root / "pred", root / "train_labels", chips=["cccc"])
    assert rep.n_chips == 1 and rep.extra == ["aaaa", "bbbb"]
    assert rep.jaccard == pytest.approx(_jac([(guess["cccc"], truth["cccc"])]))


def test_refuses_incomplete_submission(case):
    root, _, _ = case
    (root / "pred" / "bbbb.tif").unlink()
    tifffile.imwrite(root / "pred" / "zzzz.tif", np.zeros((32, 32), np.uint8))
    rep = score_folder(root / "pred", root / "train_labels")
    assert not rep.ok and rep.jaccard is None
    assert rep.missing == ["bbbb"] and rep.extra == ["zzzz"]


def test_rejects_wrong_shape_and_values_naming_the_file(case):
    root, _, _ = case
    tifffile.imwrite(root / "pred" / "aaaa.tif", np.zeros((16, 32), np.uint8))
    tifffile.imwrite(root / "pred" / "cccc.tif", np.full((32, 32), 255, np.uint8))
    rep = score_folder(root / "pred", root / "train_labels")
    assert not rep.ok and rep.jaccard is None
    text = " ".join(rep.invalid)
    assert "aaaa.tif: wrong shape (16, 32), expected (32, 32)" in text
    assert "cccc.tif: predicted mask values outside {0, 1}" in text


def test_empty_union_raises(tmp_path):
    for d in ("labels", "pred"):
        write_mask(tmp_path / d / "aaaa.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(EmptyUnionError):
        score_folder(tmp_path / "pred", tmp_path / "labels")


def test_bad_label_folder(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(DataError, match="no label files"):
        score_folder(tmp_path / "pred", tmp_path / "labels")
    with pytest.raises(DataError, match="does not exist"):
        score_folder(tmp_path / "nope", tmp_path / "labels")


def test_written_reports_hold_the_global_jaccard_of_hand_made_masks(tmp_path, capsys):
    """`evaluate score --json --report-dir` on three 10x10 chips whose counts are known by hand: the global Jaccard
    is the sum of intersections over the sum of unions (70 / 160), not the mean of the chips' IoUs (0.462), per
    chip and per location likewise; nodata pixels (every band 0) count like any other, as in the leaderboard's
    metric: the label's cloud on them, which the prediction rule leaves clear, is missed cloud."""
    from conftest import invoke, make_dataset

    chips = {c: np.full((4, 10, 10), 3000, np.uint16) for c in ("aaaa", "bbbb", "cccc")}
    chips["cccc"][:, 5:] = 0  # nodata rows
    labels = {c: np.zeros((10, 10), np.uint8) for c in chips}
    preds = {c: np.zeros((10, 10), np.uint8) for c in chips}
    labels["aaaa"][:5], preds["aaaa"][:3] = 1, 1  # I 30, U 50
    labels["bbbb"][:, :2], preds["bbbb"][:, :4] = 1, 1  # I 20, U 40
    labels["cccc"][3:], preds["cccc"][3:5] = 1, 1  # cloud on nodata rows 5-9 labelled, not predicted: I 20, U 70
    root = make_dataset(tmp_path / "data", chips, "train", labels, {"aaaa": "X", "bbbb": "X", "cccc": "Y"})
    for c, m in preds.items():
        write_mask(tmp_path / "pred" / f"{c}.tif", m)
    code, text = invoke(["evaluate", "score", "--pred", tmp_path / "pred", "--labels", root / "train_labels",
                         "--json", tmp_path / "s.json", "--report-dir", tmp_path / "rep"], capsys)
    assert code == 0, text
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["intersection"], s["union"], s["n_chips"]) == (70, 160, 3) and s["ok"]
    assert s["jaccard"] == pytest.approx(70 / 160, abs=1e-12)
    assert s["precision"] == pytest.approx(70 / 90) and s["recall"] == pytest.approx(70 / 140)
    chip = pd.read_csv(tmp_path / "rep" / "per_chip.csv").set_index("chip_id")
    assert chip["iou"].to_dict() == pytest.approx({"aaaa": 30 / 50, "bbbb": 20 / 40, "cccc": 20 / 70})
    assert chip.loc["cccc", "fn"] == 50 and chip.loc["cccc", "location"] == "Y"
    loc = pd.read_csv(tmp_path / "rep" / "per_location.csv").set_index("location")
    assert loc["jaccard"].to_dict() == pytest.approx({"X": 50 / 90, "Y": 20 / 70})
    assert loc["n_chips"].to_dict() == {"X": 2, "Y": 1}


def test_a_label_of_the_wrong_shape_is_blamed_not_the_prediction(tmp_path, capsys):
    """Issue 29: a 16-px label among 32-px chips made `evaluate score` call the (right) prediction invalid."""
    from conftest import invoke, make_dataset, one_line_refusal

    chips = {c: np.full((4, 32, 32), 1000, np.uint16) for c in ("aaaa", "bbbb", "cccc")}
    labels = {c: np.ones((32, 32), np.uint8) for c in chips}
    labels["bbbb"] = np.ones((16, 16), np.uint8)
    root = make_dataset(tmp_path / "data", chips, "train", labels)
    for c in chips:
        write_mask(tmp_path / "pred" / f"{c}.tif", np.ones((32, 32), np.uint8))
    bad = root / "train_labels" / "bbbb.tif"

    def score(*args):
        code, text = invoke(["evaluate", "score", *args], capsys)
        return code, "\n".join(ln for ln in text.replace("\r", "\n").splitlines() if "chip/s" not in ln)  # the bar

    code, text = score("--pred", tmp_path / "pred", "--labels", root / "train_labels", "--report-dir", tmp_path / "rep")
    one_line_refusal(code, text, f"{bad}: a label of 16x16 pixels, but its chip")
    assert "32x32: the label does not fit its chip" in text
    # a labels folder without its chips: the shape of the other labels says which is wrong
    (tmp_path / "labels").mkdir()
    for c in chips:
        (tmp_path / "labels" / f"{c}.tif").write_bytes((root / "train_labels" / f"{c}.tif").read_bytes())
    code, text = score("--pred", tmp_path / "pred", "--labels", tmp_path / "labels", "--report-dir", tmp_path / "rep2")
    one_line_refusal(code, text, f"{tmp_path / 'labels' / 'bbbb.tif'}: a label of 16x16 pixels, but the other "
                                 f"labels of")
