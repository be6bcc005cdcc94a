"""The command line, end to end on small generated data (each command as a user would call it)."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from cloudkd.cli import app

runner = CliRunner()


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res


def global_jaccard(pred_dir, labels_dir, chip_ids=None, counts=False):
    """The leaderboard metric from the files, in numpy: sum of intersections / sum of unions over the chips
    (with ``counts``: the two sums as well)."""
    import tifffile
    from pathlib import Path

    ids = chip_ids if chip_ids is not None else sorted(p.stem for p in Path(labels_dir).glob("*.tif"))
    inter = union = 0
    for c in ids:
        pred = tifffile.imread(Path(pred_dir) / f"{c}.tif").astype(bool)
        lab = tifffile.imread(Path(labels_dir) / f"{c}.tif").astype(bool)
        inter += int((pred & lab).sum())
        union += int((pred | lab).sum())
    return (inter / union, inter, union) if counts else inter / union


def test_synth_validate_preview(tmp_path):
    out = tmp_path / "gen"
    import numpy as np
    import tifffile
    from PIL import Image

    r = invoke("synth", out, "--n-train", 6, "--n-test", 2, "--size", 64, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert "wrote 8 chips" in r.output
    for split, n in (("train", 6), ("test", 2)):
        chips = sorted((out / f"{split}_features").iterdir())
        assert len(chips) == n
        assert sorted(p.stem for p in (out / f"{split}_labels").iterdir()) == [c.name for c in chips]
        meta = pd.read_csv(out / f"{split}_metadata.csv")
        assert sorted(meta.chip_id) == [c.name for c in chips]
        for c in chips:
            bands = [tifffile.imread(c / f"{b}.tif") for b in ("B02", "B03", "B04", "B08")]
            assert all(b.shape == (64, 64) and b.dtype == np.uint16 for b in bands)
            lab = tifffile.imread(out / f"{split}_labels" / f"{c.name}.tif")
            assert lab.shape == (64, 64) and set(np.unique(lab)) <= {0, 1}
    with Image.open(out / "preview.png") as im:  # a figure of images, not only titles on a blank page
        assert im.format == "PNG" and im.width > 200 and im.height > 100
        assert (np.asarray(im.convert("L")) < 240).mean() > 0.2
    r = invoke("synth", out, "--n-train", 6, "--n-test", 2, "--size", 64)
    assert r.exit_code == 0 and "already holds this dataset" in r.output
    r = invoke("validate", out)
    assert r.exit_code == 0 and "6 chips OK, shape (64, 64)" in r.output
    r = invoke("validate", out, "--split", "test", "--size", 512)
    assert r.exit_code == 1 and "wrong shape (64, 64), expected (512, 512)" in r.output
    r = invoke("preview", out, "--out", tmp_path / "p.png", "--n", 2)
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and (np.asarray(im.convert("L")) < 240).mean() > 0.2


def test_synth_rejects_bad_settings(tmp_path, capsys):
    from conftest import invoke as run_cloudkd, one_line_refusal

    r = invoke("synth", tmp_path / "x", "--size", 8)
    assert r.exit_code == 2 and "must be between 32 and 4096 pixels, got 8" in r.output
    # as a user types it: exit 2, one line naming the option, no traceback, nothing written
    code, text = run_cloudkd(["synth", tmp_path / "x", "--difficulty", 2], capsys)
    one_line_refusal(code, text, "'--difficulty'")
    assert "Invalid value" in text and not (tmp_path / "x").exists()
    r = invoke("synth", tmp_path / "x", "--label-style", "sloppy")
    assert r.exit_code == 2 and "label_style must be one of" in r.output and not (tmp_path / "x").exists()


def test_synth_label_styles_label_the_same_images(tmp_path):
    from cloudkd.data import read_chip_dn, read_label, resolve_split

    for style in ("annotator", "opacity"):
        r = invoke("synth", tmp_path / style, "--n-train", 3, "--n-test", 0, "--size", 64, "--label-style", style,
                   "--no-preview", "--workers", 1)
        assert r.exit_code == 0, r.output
    a, o = resolve_split(tmp_path / "annotator"), resolve_split(tmp_path / "opacity")
    assert a.chip_ids() == o.chip_ids()
    generous = 0
    for cid in a.chip_ids():
        assert (read_chip_dn(a.chip_dir(cid)) == read_chip_dn(o.chip_dir(cid))).all()
        la, lo = read_label(a.label_path(cid)), read_label(o.label_path(cid))
        generous += int(la.sum()) - int(lo.sum())
    assert generous > 0, "the annotator's outlines are more generous than the opacity rule"


def test_folds_threshold_score(small_data, tmp_path):
    r = invoke("folds", small_data, "--out", tmp_path / "folds.csv", "--k", 3)
    assert r.exit_code == 0, r.output
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert (folds.groupby("location").fold.nunique() == 1).all()

    r = invoke("baseline", "threshold", "fit", small_data, "--out", tmp_path / "t.json",
               "--folds", tmp_path / "folds.csv", "--val-fold", 0)
    assert r.exit_code == 0, r.output
    model = json.loads((tmp_path / "t.json").read_text())
    assert model["n_train_chips"] == int((folds.fold != 0).sum())

    r = invoke("baseline", "threshold", "predict", "--model", tmp_path / "t.json",
               "--features", small_data / "train_features", "--out", tmp_path / "pred")
    assert r.exit_code == 0 and "wrote 30 masks" in r.output
    assert sorted(p.stem for p in (tmp_path / "pred").glob("*.tif")) == sorted(folds.chip_id)

    r = invoke("score", "--pred", tmp_path / "pred", "--labels", small_data / "train_labels",
               "--folds", tmp_path / "folds.csv", "--fold", 0, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n_chips"] == int((folds.fold == 0).sum()) and s["missing"] == []
    want, inter, union = global_jaccard(tmp_path / "pred", small_data / "train_labels",
                                        list(folds.chip_id[folds.fold == 0]), counts=True)
    assert 0.05 < want < 0.95 and s["jaccard"] == pytest.approx(want, abs=1e-12)
    assert (s["intersection"], s["union"]) == (inter, union)
    assert f"global Jaccard {want:.5f}  (intersection {inter}, union {union}" in r.output
    per_loc = pd.read_csv(tmp_path / "pred_score" / "per_location.csv")
    assert set(per_loc.location) == set(folds.location[folds.fold == 0])


def test_score_refuses_missing_chips(small_data, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(small_data / "test_labels", pred)  # a perfect submission ...
    r = invoke("score", "--pred", pred, "--labels", small_data / "test_labels", "--json", tmp_path / "ok.json")
    assert r.exit_code == 0 and json.loads((tmp_path / "ok.json").read_text())["jaccard"] == 1.0
    gone = sorted(pred.iterdir())[0]
    gone.unlink()                                      # ... minus one chip
    r = invoke("score", "--pred", pred, "--labels", small_data / "test_labels", "--json", tmp_path / "s.json")
    assert "pred_score: holds a score-report" in str(r.exception)  # the first run's report folder: --force
    r = invoke("score", "--pred", pred, "--labels", small_data / "test_labels", "--json", tmp_path / "s.json",
               "--force")
    assert r.exit_code == 1
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["missing"] == [gone.stem] and s["jaccard"] is None
    assert gone.stem in r.output


def test_bad_input_is_one_clear_line(tmp_path):
    """Through the console script, a DataError is a message naming the problem, not a traceback."""
    exe = shutil.which("cloudkd") or str(__import__("pathlib").Path(sys.executable).with_name("cloudkd"))
    p = subprocess.run([exe, "validate", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert p.returncode == 2
    assert "nowhere: dataset folder does not exist" in p.stderr and "Traceback" not in p.stderr


def test_demo_quick(tmp_path, capsys):
    r = invoke("demo", "--quick", "--workdir", tmp_path / "run", "--data", tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert "Global Jaccard" in r.output and "thresholding" in r.output and "nnU-Net teacher" in r.output
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {row["method"]: row for row in res["rows"]}
    # every row's Jaccard is the leaderboard metric of the masks it wrote, recomputed here from the files
    labels, pred = tmp_path / "data" / "test_labels", tmp_path / "run" / "predictions"
    for method, folder in (("thresholding", "threshold"), ("nnU-Net teacher", "teacher"),
                           ("student unet-s (KD)", "student"), ("student int8 ONNX", "student_int8")):
        assert len(list((pred / folder).glob("*.tif"))) == 12
        assert rows[method]["jaccard"] == pytest.approx(global_jaccard(pred / folder, labels), abs=1e-12), method
    assert 0.3 < rows["thresholding"]["jaccard"] < 1.0 and rows["nnU-Net teacher"]["params"] > 10_000
    assert len(list((tmp_path / "run" / "soft" / "test").glob("*.tif"))) == 12
    # the teacher's masks are at the threshold fitted on fold 0's validation chips (recorded in teacher.json)
    import numpy as np

    from cloudkd.data import read_label
    from cloudkd.data.soft import read_soft

    fit = json.loads((tmp_path / "run" / "nnunet" / "teacher.json").read_text())["threshold"]
    assert f"threshold {fit['threshold']:g}, fitted on the {fit['n_chips']} validation chips of fold 0" in r.output
    for c in sorted(p.stem for p in (pred / "teacher").glob("*.tif")):
        prob = read_soft(tmp_path / "run" / "soft" / "test" / f"{c}.tif")
        mask = read_label(pred / "teacher" / f"{c}.tif")
        sure = np.abs(prob - fit["threshold"]) > 1 / 255  # off the soft labels' quantisation step
        np.testing.assert_array_equal(mask[sure], (prob > fit["threshold"])[sure])
    student = rows["student unet-s (KD)"]
    assert student["params"] == 152_841
    # the student's masks are its network's cloud logits above the fitted threshold's, grown by the dilation the
    # demo fitted with it on the student's validation fold (scipy's cross dilation), nodata clear, chip by chip
    import numpy as np
    import tifffile
    import torch
    from scipy.ndimage import binary_dilation

    from cloudkd.data import normalise, read_chip, resolve_split
    from cloudkd.student.runs import load_student

    rule = json.loads((tmp_path / "run" / "student" / "student.json").read_text())["rule"]
    t = rule["threshold"]
    assert f"threshold {t:g}, dilation {rule['dilate']} px" in r.output
    table = rule["val_jaccard"]  # threshold -> dilation -> validation Jaccard: the demo took the best pair
    assert table[f"{t:g}"][str(rule["dilate"])] == max(j for row in table.values() for j in row.values())
    model, test = load_student(tmp_path / "run" / "student"), resolve_split(tmp_path / "data", "test")
    for c in test.chip_ids():
        refl = read_chip(test.chip_dir(c))
        with torch.no_grad():
            above = (model(torch.from_numpy(normalise(refl))[None])[0, 0] > np.log(t / (1 - t))).numpy()
        if rule["dilate"]:
            above = binary_dilation(above, iterations=rule["dilate"])
        want = above & ~(refl == 0).all(0)
        np.testing.assert_array_equal(tifffile.imread(pred / "student" / f"{c}.tif"), want.astype(np.uint8))
    # the packed student, run by main.py in the emulated runtime, scores exactly what the library's predict does
    sub = rows["submission.zip (main.py, emulated runtime)"]
    assert sub["jaccard"] == pytest.approx(student["jaccard"], abs=1e-9)
    verdict = json.loads((tmp_path / "run" / "runtime_test.json").read_text())
    assert verdict["ok"] and verdict["n_chips"] == 12
    int8 = rows["student int8 ONNX"]
    assert int8["params"] == 152_841 and int8["bytes"] < student["bytes"] / 2
    assert abs(int8["jaccard"] - student["jaccard"]) < 0.05
    assert all(row["bytes"] > 0 for row in res["rows"])
    assert json.loads((tmp_path / "run" / "export" / "export.json").read_text())["checks"]["n_check_chips"] == 8
    info = json.loads((tmp_path / "run" / "student" / "student.json").read_text())
    assert info["teacher_mode"] == "online" and info["config"]["kd_weight"] > 0  # distilled, not just trained
    assert (tmp_path / "run" / "summary.png").is_file()
    # a second run reuses the data, the fitted thresholds and the trained teacher
    r = invoke("demo", "--quick", "--workdir", tmp_path / "run", "--data", tmp_path / "data")
    assert r.exit_code == 0, r.output
    assert "reused the existing dataset" in r.output and "threshold: reused" in r.output
    assert "reused the trained fold 0" in r.output and "reused the trained student" in r.output
    assert f"rule: reused threshold {t:g}, dilation {rule['dilate']} px" in r.output
    assert f"threshold {fit['threshold']:g}, reused the fit on the {fit['n_chips']} validation chips of fold 0" in r.output
    assert json.loads((tmp_path / "run" / "nnunet" / "teacher.json").read_text())["threshold"] == fit
    assert "export: reused" in r.output
    again = {row["method"]: row for row in json.loads((tmp_path / "run" / "results.json").read_text())["rows"]}
    assert again["thresholding"]["jaccard"] == pytest.approx(rows["thresholding"]["jaccard"])
    assert again["nnU-Net teacher"]["jaccard"] == pytest.approx(rows["nnU-Net teacher"]["jaccard"])
    assert again["student unet-s (KD)"]["jaccard"] == pytest.approx(student["jaccard"])
    # a demo whose teacher recipe changed length trains its teacher again, and the student after it, rather than
    # reusing the fold trained to the old recipe (the model folder does not name the epochs)
    from dataclasses import replace
    from pathlib import Path

    import torch

    from cloudkd.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(workdir=str(tmp_path / "run"), data=str(tmp_path / "data"))
    cfg.teacher_budget = replace(cfg.teacher_budget, epochs=cfg.teacher_budget.epochs + 1)
    run_demo(cfg, progress=False)
    out = capsys.readouterr().out
    assert f"the trained fold 0 has {cfg.teacher_budget.epochs - 1} epochs and the recipe now has " \
           f"{cfg.teacher_budget.epochs}: training it again" in out
    assert "reused the trained fold 0" not in out and "reused the trained student" not in out
    assert "validation chips of fold 0" in out and "reused the fit on" not in out  # the new fold's threshold fitted
    fold = json.loads((tmp_path / "run" / "nnunet" / "teacher.json").read_text())["model_folder"]
    final = torch.load(Path(fold) / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == cfg.teacher_budget.epochs


def test_demo_n_extra_train_grows_the_train_split_and_keeps_the_test_split(tmp_path, monkeypatch):
    """`demo --n-extra-train N` (a data-scaling run) generates N more labelled train chips; its test chips are
    byte for byte the plain demo's, so both runs are scored on one split. A negative count is refused."""
    import hashlib

    import cloudkd.demo as demo
    from cloudkd.data import DataError, resolve_split
    from cloudkd.data.synth.sentinel2 import synthesize

    def digest(folder):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()

    r = invoke("demo", "--quick", "--n-extra-train", "-1", "--workdir", tmp_path / "w0", "--data", tmp_path / "d0")
    assert r.exit_code == 2 and "--n-extra-train" in r.output and "must be >= 0" in r.output
    assert not (tmp_path / "d0").exists()
    monkeypatch.setattr(demo, "load_index", lambda *a, **k: (_ for _ in ()).throw(DataError("STOPPED")))
    r = invoke("demo", "--quick", "--n-extra-train", "5", "--workdir", tmp_path / "w", "--data", tmp_path / "grown")
    assert isinstance(r.exception, DataError) and "STOPPED" in str(r.exception)  # right after the data stage
    assert "generate 29 train + 12 test chips" in r.output
    plain = demo.DemoConfig.quick()
    synthesize(tmp_path / "plain", plain.synth_config(), workers=1, progress=False)
    assert len(resolve_split(tmp_path / "grown", "train").chip_ids()) == plain.n_train + 5
    assert set(resolve_split(tmp_path / "plain", "train").chip_ids()) < \
        set(resolve_split(tmp_path / "grown", "train").chip_ids())
    for sub in ("test_features", "test_labels"):
        assert digest(tmp_path / "plain" / sub) == digest(tmp_path / "grown" / sub)
