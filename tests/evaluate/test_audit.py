"""``cloudkd evaluate audit``: the evidence of one chip, the ranking of injected label errors, the CSV, the contact
sheet, the exclusion list, the out-of-fold mode, and bad input."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cloudkd.data import read_label, resolve_split
from cloudkd.evaluate import audit as A

from conftest import invoke, make_dataset


# ---------------------------------------------------------------------------------------------------- evidence
def _chip(h=128, w=128, value=0.05):
    return np.full((4, h, w), value, np.float32)


def test_evidence_of_hand_made_labels():
    n = 128 * 128
    refl = _chip()
    cloud = np.zeros((128, 128), np.uint8)
    cloud[20:80, 30:90] = 1
    refl[:, cloud > 0] = 0.5  # the cloud is bright
    same = A.chip_evidence(refl, cloud, cloud)
    assert same["suspicion"] == 0.0 and same["label_iou"] == 1.0 and same["shift_gain"] == 0.0
    assert same["best_shift_px"] == 0.0 and same["label_on_dark"] == 0.0 and same["bright_unlabelled"] == 0.0
    # an empty label on the cloud: nothing shared; the 3600 cloud pixels are wrong, the model sure of each
    empty = A.chip_evidence(refl, np.zeros_like(cloud), cloud)
    assert empty["label_iou"] == 0.0 and empty["suspicion"] == pytest.approx(3600 / n)
    assert empty["bright_unlabelled"] == pytest.approx(3600 / n)
    # both clear: IoU 1, nothing suspicious
    clear = A.chip_evidence(_chip(), np.zeros_like(cloud), np.zeros_like(cloud))
    assert clear["label_iou"] == 1.0 and clear["suspicion"] == 0.0
    # a label shifted by 16 px down: found by the shift search. Moved back up, it matches the model exactly over
    # the window it then covers (rows 0-111); as it lies it shares 44 of its 60 rows with the model there. The
    # gain of the move adds to the disagreement as it lies (every pixel certain: weight 1)
    shifted = np.roll(cloud, 16, axis=0)
    ev = A.chip_evidence(refl, shifted, cloud)
    inter = 3600 - 16 * 60
    assert ev["label_iou"] == pytest.approx(inter / (2 * 3600 - inter))
    assert ev["best_shift_px"] == pytest.approx(16.0)
    k_win = A.SMOOTH * 112 * 128
    gain = 1 - (inter + k_win) / (2 * 3600 - inter + k_win)
    assert ev["shift_gain"] == pytest.approx(gain, abs=1e-5)
    assert ev["suspicion"] == pytest.approx((2 * 3600 - 2 * inter) / n + gain, abs=1e-5)
    # a model that misses the 20 columns of a cloud at the chip's edge: cropping that edge away would agree better,
    # but no move of the label does, so it is no shift
    edge, missed = np.zeros((128, 128), np.uint8), np.zeros((128, 128), np.uint8)
    edge[30:90, 60:] = 1
    missed[30:90, 60:108] = 1
    assert A.shift_search(edge, missed) == (0.0, 0.0)
    # a full or empty label gains nothing from a move either
    assert A.shift_search(np.ones_like(cloud), cloud) == A.shift_search(np.zeros_like(cloud), cloud) == (0.0, 0.0)
    # labelled cloud on nodata and on dark ground
    dark = _chip(value=0.02)
    dark[:, :, :64] = 0.0  # left half nodata
    lab = np.zeros((128, 128), np.uint8)
    lab[:, 32:96] = 1  # half of it on nodata, half on dark ground
    ev = A.chip_evidence(dark, lab, np.zeros_like(lab))
    assert ev["label_on_dark"] == 1.0
    dark[:, :, 64:] = 0.5  # the right half is now bright: only the nodata half counts
    assert A.chip_evidence(dark, lab, np.zeros_like(lab))["label_on_dark"] == pytest.approx(0.5)
    # disagreement counts by how sure the model is: an empty label under cloud the model calls 0.99 is more
    # suspicious than under cloud it calls 0.6 (weights 0.98 and 0.2 at threshold 0.5), and at threshold 0.3 the
    # same 0.6 is surer (0.3 / 0.7)
    sure, unsure = (A.chip_evidence(refl, np.zeros_like(cloud), np.where(cloud > 0, p, 0.0))
                    for p in (0.99, 0.6))
    assert sure["suspicion"] == pytest.approx(0.98 * 3600 / n)
    assert unsure["suspicion"] == pytest.approx(0.2 * 3600 / n)
    at03 = A.chip_evidence(refl, np.zeros_like(cloud), np.where(cloud > 0, 0.6, 0.0), threshold=0.3)
    w = 0.3 / 0.7
    assert at03["suspicion"] == pytest.approx(w * 3600 / n)
    assert sure["label_iou"] == unsure["label_iou"] == 0.0


def test_average_precision():
    assert A.average_precision([0.9, 0.8, 0.1, 0.05], [True, True, False, False]) == 1.0
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert A.average_precision([0.9, 0.8, 0.7, 0.1], [True, False, True, False]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError):
        A.average_precision([0.5], [False])


def test_the_audit_ranks_every_injected_noise_kind_above_clean_labels(tmp_path):
    """The generator's label noise (swap, shift, empty, full, nodata) on 40 chips, judged by a good but imperfect
    model: one whose masks are the clean labels with a model's typical errors (outlines 2 px too wide, speckle
    on 2 % of the pixels, nodata clear by the prediction rule). Every noisy label ranks above the clean ones'
    bulk: average precision >= 0.9."""
    import torch
    from scipy import ndimage

    from cloudkd.data.chips import load_index
    from cloudkd.data.normalise import normalise
    from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

    kw = dict(n_train=40, n_test=2, size=96, seed=5, n_train_locations=4, p_nodata=0.3)
    synthesize(tmp_path / "clean", SynthConfig(**kw), workers=1, progress=False)
    synthesize(tmp_path / "noisy", SynthConfig(**kw, label_noise=0.25), workers=1, progress=False)
    info = pd.read_csv(tmp_path / "noisy" / "train_synth_info.csv").fillna("")
    assert set(info["label_noise"]) - {""} == {"swap", "shift", "empty", "full", "nodata"}
    clean = resolve_split(tmp_path / "clean", "train")
    rng = np.random.default_rng(0)
    judge = {}
    from cloudkd.data import read_chip

    for c in clean.chip_ids():
        refl = read_chip(clean.chip_dir(c))
        mask = ndimage.binary_dilation(read_label(clean.label_path(c)) > 0, iterations=2)
        mask ^= rng.random(mask.shape) < 0.02
        judge[normalise(refl).tobytes()] = np.where(mask, 4.0, -4.0).astype(np.float32)

    def logits(x):
        return torch.from_numpy(np.stack([judge[xi.numpy().tobytes()] for xi in x])[:, None])

    index = load_index(resolve_split(tmp_path / "noisy", "train"), require_labels=True)
    table = A.rank(A.audit_chips(index, A.AuditModel("judge", "test", logits), batch=8, progress=False))
    noisy = set(info.loc[info["label_noise"] != "", "chip_id"])
    ap = A.average_precision(table["suspicion"], table["chip_id"].isin(noisy))
    assert ap >= 0.9, table.merge(info[["chip_id", "label_noise"]]).head(14).to_string()
    # without any noise, the same judge finds nothing alarming
    clean_table = A.rank(A.audit_chips(load_index(clean, require_labels=True), A.AuditModel("j", "t", logits),
                                       progress=False))
    assert clean_table["suspicion"].max() < table.loc[table["chip_id"].isin(noisy), "suspicion"].median()


# ---------------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def noisy(small_data, tmp_path_factory):
    """A copy of the small dataset's train split with four wrong labels: the cloudiest chip labelled clear, the
    clearest labelled all cloud, and two chips of different cover with their labels swapped."""
    root = tmp_path_factory.mktemp("noisy") / "data"
    shutil.copytree(small_data, root, ignore=shutil.ignore_patterns("test_*"))
    split = resolve_split(root, "train")
    frac = {c: read_label(split.label_path(c)).mean() for c in split.chip_ids()}
    order = sorted(frac, key=frac.get)
    clear, cloudy = order[0], order[-1]
    mid = [c for c in order if 0.2 < frac[c] < 0.8]
    a, b = mid[0], order[-2]
    wrong = {clear: np.ones_like(read_label(split.label_path(clear))),
             cloudy: np.zeros_like(read_label(split.label_path(cloudy))),
             a: read_label(split.label_path(b)), b: read_label(split.label_path(a))}
    for c, lab in wrong.items():
        tifffile.imwrite(split.label_path(c), lab)
    return root, sorted(wrong)


def test_audit_ranks_wrong_labels_first_and_writes_csv_sheet_and_list(noisy, student, tmp_path, capsys):
    root, wrong = noisy
    out = tmp_path / "audit"
    code, text = invoke(["evaluate", "audit", root, "--model", student, "--out", out, "--top", 5,
                         "--exclude-out", tmp_path / "exclude.txt"], capsys)
    assert code == 0, text
    table = pd.read_csv(out / "audit.csv")
    ids = resolve_split(root, "train").chip_ids()
    assert list(table.columns) == [c for c in A.COLUMNS if c != "fold"]
    assert sorted(table["chip_id"]) == ids and list(table["rank"]) == list(range(1, len(ids) + 1))
    assert (np.diff(table["suspicion"]) <= 0).all() and table["suspicion"].between(0, 1).all()
    # this briefly trained student over-calls cloud, so its ranking is not tested here (see the next test and
    # benchmarks/label_audit.py for rankings by good judges); the errors still sit above the median
    assert table.loc[table["chip_id"].isin(wrong), "rank"].median() < len(ids) / 2
    # the evidence is the model's: recompute two chips from its probabilities; the label IoU is the one of
    # student predict's masks
    import torch

    from cloudkd.data import normalise, read_chip
    from cloudkd.student.predict import predict_folder
    from cloudkd.student.runs import load_student

    net = load_student(student)
    predict_folder(net, root / "train_features", tmp_path / "pred", progress=False)
    split = resolve_split(root, "train")
    for i in (0, len(table) // 2):
        c = table["chip_id"].iloc[i]
        refl = read_chip(split.chip_dir(c))
        with torch.no_grad():
            prob = torch.sigmoid(net(torch.from_numpy(normalise(refl))[None]))[0, 0].numpy()
        lab = read_label(split.label_path(c))
        ev = A.chip_evidence(refl, lab, prob)
        assert table["suspicion"].iloc[i] == pytest.approx(ev["suspicion"], abs=1e-4)
        mask = read_label(tmp_path / "pred" / f"{c}.tif") > 0
        union = ((lab > 0) | mask).sum()
        assert table["label_iou"].iloc[i] == pytest.approx(((lab > 0) & mask).sum() / union if union else 1.0,
                                                           abs=1e-4)
    # the exclusion list: exactly the chips above the default suspicion, after a comment line
    lines = (tmp_path / "exclude.txt").read_text().splitlines()
    assert lines[0].startswith("#")
    assert len(lines) > 1 and lines[1:] == table.loc[table["suspicion"] > A.EXCLUDE_ABOVE, "chip_id"].tolist()
    from cloudkd.data.exclude import read_exclude

    assert read_exclude(tmp_path / "exclude.txt") == lines[1:]  # what train / folds / prepare --exclude read
    # the contact sheet: 5 chips, 2 a row -> 3 rows of RGB | label | model
    with Image.open(out / "audit.png") as im:
        w, h = im.size
    assert w > h and 0.4 < h / w < 0.8, (w, h)
    assert f"{len(ids)} chips" in text and "chips/s" in text
    # an existing audit is kept unless --force
    before = (out / "audit.csv").read_bytes()
    code, text = invoke(["evaluate", "audit", root, "--model", student, "--out", out], capsys)
    assert code == 2 and "--force" in text and (out / "audit.csv").read_bytes() == before


def test_audit_with_an_onnx_model_equals_the_run(noisy, student, tmp_path, capsys):
    from cloudkd.onboard.export import export_onnx
    from cloudkd.student.runs import load_student

    root, _ = noisy
    onnx = export_onnx(load_student(student), tmp_path / "m.onnx", dynamic=True)
    assert invoke(["audit", root, "--model", onnx, "--out", tmp_path / "o"], capsys)[0] == 0  # the alias
    assert invoke(["evaluate", "audit", root, "--model", student, "--out", tmp_path / "t"], capsys)[0] == 0
    a, b = pd.read_csv(tmp_path / "o" / "audit.csv"), pd.read_csv(tmp_path / "t" / "audit.csv")
    a, b = a.set_index("chip_id").sort_index(), b.set_index("chip_id").sort_index()
    # float rounding may flip a few pixels at the threshold, nothing more
    assert np.abs(a["suspicion"] - b["suspicion"]).max() < 0.01


def _oof_audit(root, tmp_path, capsys, epochs, steps):
    """Two location folds of ``root`` (TMP/folds.csv) and the arguments of an out-of-fold audit into TMP/oof."""
    folds = tmp_path / "folds.csv"
    assert invoke(["data", "folds", root, "--k", 2, "--out", folds], capsys)[0] == 0
    return folds, ["evaluate", "audit", root, "--folds", folds, "--train", "--epochs", epochs, "--steps", steps,
                   "--batch", 4, "--crop", 64, "--student-model", "unet-xs", "--out", tmp_path / "oof"]


def test_out_of_fold_audit_judges_each_chip_by_the_model_that_did_not_see_it(noisy, tmp_path, capsys):
    """Every chip's evidence is that of the fold model whose validation fold holds the chip: its suspicion is
    recomputed here from that model's probabilities, and the other fold's model (which trained on the chip) would
    have given other values; each fold model's record says it validated on exactly the chips of its fold."""
    import hashlib
    import json

    import torch

    from cloudkd.data import normalise, read_chip
    from cloudkd.student.runs import load_student, recorded_threshold

    root, wrong = noisy
    folds, args = _oof_audit(root, tmp_path, capsys, epochs=1, steps=2)
    code, text = invoke(args, capsys)
    assert code == 0, text
    table = pd.read_csv(tmp_path / "oof" / "audit.csv")
    fold_of = pd.read_csv(folds).set_index("chip_id")["fold"]
    split = resolve_split(root, "train")
    assert sorted(table["chip_id"]) == split.chip_ids() and set(fold_of) == {0, 1}
    runs = {k: tmp_path / "oof" / "oof" / f"fold{k}" for k in (0, 1)}
    for k, run in runs.items():
        stamp = json.loads((run / "audit_fold.json").read_text())
        assert stamp["val_fold"] == k and stamp["folds"] == str(folds) and stamp["model"] == "unet-xs"
        # trained on the other fold: the chips it validated on (never trained on) are fold k's
        ids = sorted(fold_of.index[fold_of == k])
        val = json.loads((run / "run.json").read_text())["identity"]["val_chips"]
        assert val == {"n": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    nets = {k: load_student(run) for k, run in runs.items()}
    threshold = recorded_threshold(runs[0])
    other_differs = 0
    for _, r in table.iterrows():
        refl, lab = read_chip(split.chip_dir(r["chip_id"])), read_label(split.label_path(r["chip_id"]))
        with torch.no_grad():
            ev = {k: A.chip_evidence(refl, lab, torch.sigmoid(net(torch.from_numpy(normalise(refl))[None]))[0, 0]
                                     .numpy(), threshold) for k, net in nets.items()}
        k = int(fold_of[r["chip_id"]])
        assert r["fold"] == k
        for col in ("suspicion", "label_iou", "pred_fraction"):
            assert r[col] == pytest.approx(ev[k][col], abs=1e-4), (r["chip_id"], col)
        other_differs += abs(ev[1 - k]["suspicion"] - ev[k]["suspicion"]) > 1e-3
    assert other_differs >= len(table) // 2  # the other fold's model would have judged most chips otherwise
    # again with --force: the fold models are reused, not trained again
    code, text = invoke(args + ["--force"], capsys)
    assert code == 0 and text.count("reusing") == 2, text
    assert pd.read_csv(tmp_path / "oof" / "audit.csv").equals(table)


def test_out_of_fold_audit_retrains_when_a_label_changes_and_logs_each_epoch(noisy, tmp_path, capsys):
    """Issue 29: the fold models were reused after a label changed (the stamp held the config only), so the audit
    judged chips with models trained on the old labels; and a fold's training was silent until it ended."""
    import os

    root = tmp_path / "data"
    shutil.copytree(noisy[0], root)
    folds, args = _oof_audit(root, tmp_path, capsys, epochs=2, steps=1)
    code, text = invoke(args, capsys)
    assert code == 0, text
    for k, i in ((0, 1), (1, 2)):  # progress: one line per epoch of each fold's training
        for e in (1, 2):
            assert re.search(rf"fold {k} \({i} of 2\): epoch {e}/2, val Jaccard [0-9.]+ \(\d+ s\)", text), text
    # rewrite one label in place: the same size and modification time, other content
    split = resolve_split(root, "train")
    path = split.label_path(split.chip_ids()[0])
    st = path.stat()
    tifffile.imwrite(path, 1 - read_label(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    code, text = invoke(args + ["--force"], capsys)
    assert code == 0, text
    assert "reusing" not in text and text.count("training unet-xs on the other folds") == 2, text
    assert "the labels or folds changed" in text
    # unchanged labels: reused
    code, text = invoke(args + ["--force"], capsys)
    assert code == 0 and text.count("reusing") == 2, text


def _bad_roots(tmp_path):
    chips = {c: np.full((4, 64, 64), 1000, np.uint16) for c in ("aaaa", "bbbb")}
    no_labels = make_dataset(tmp_path / "nolabels", chips)
    wrong_shape = make_dataset(tmp_path / "shape", chips, labels={"aaaa": np.zeros((64, 64), np.uint8),
                                                                  "bbbb": np.zeros((32, 64), np.uint8)})
    return no_labels, wrong_shape


def test_audit_bad_input_is_one_clear_line(student, tmp_path, capsys):
    no_labels, wrong_shape = _bad_roots(tmp_path)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    out = tmp_path / "out"
    cases = [
        (["evaluate", "audit", no_labels, "--model", student, "--out", out], "labels"),
        (["evaluate", "audit", wrong_shape, "--model", student, "--out", out], "bbbb.tif"),
        (["evaluate", "audit", wrong_shape, "--model", other, "--out", out], "unknown model kind"),
        (["evaluate", "audit", wrong_shape, "--model", tmp_path / "none", "--out", out], "not found"),
        (["evaluate", "audit", wrong_shape, "--out", out], "give one judge"),
        (["evaluate", "audit", wrong_shape, "--train", "--out", out], "--train needs --folds"),
        (["evaluate", "audit", wrong_shape, "--model", student, "--above", 2, "--out", out], "--above"),
    ]
    for args, needle in cases:
        code, text = invoke(args, capsys)
        assert code == 2, (args, text)
        assert needle in text and "Traceback" not in text, (args, text)
        lines = [ln for ln in re.split(r"[\r\n]", text) if ln.strip() and "batch/s" not in ln]  # progress bar
        assert len(lines) == 1, text
        assert not out.exists() or not any(out.iterdir()), args
