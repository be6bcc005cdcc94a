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


def test_report_files(case, tmp_path):
    root, _, _ = case
    rep = score_folder(root / "pred", root / "train_labels")
    rep.write(tmp_path / "rep", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["jaccard"] == pytest.approx(rep.jaccard)
    chips = pd.read_csv(tmp_path / "rep" / "per_chip.csv")
    assert set(chips.columns) >= {"chip_id", "location", "iou", "precision", "recall"}
    assert len(pd.read_csv(tmp_path / "rep" / "per_location.csv")) == 2


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
