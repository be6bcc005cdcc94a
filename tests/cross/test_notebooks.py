"""The four notebooks execute top to bottom on small generated data, in order (each builds on the one before)."""

import json
import os
import re
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import tifffile
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ORDER = ["01_explore_data", "02_teacher_nnunet", "03_distill_student", "04_onboard_export"]


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    env = {"CLOUDKD_NB_DATA": str(root / "data"), "CLOUDKD_NB_WORK": str(root / "work"), "CLOUDKD_NB_QUICK": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_notebooks_are_stored_without_outputs():
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
        assert "parameters" in nb.cells[1].metadata.get("tags", []), name  # the parameters cell comes first


def _images(nb) -> int:
    """How many figures (image/png outputs) a run notebook shows."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, (pattern, text[-2000:])
    return float(m.group(1))


def _global_jaccard(pred_dir, labels_dir) -> float:
    """Sum of intersections / sum of unions over every labelled chip, from the mask files."""
    inter = union = 0
    for lab_path in sorted(Path(labels_dir).glob("*.tif")):
        pred = tifffile.imread(Path(pred_dir) / lab_path.name).astype(bool)
        lab = tifffile.imread(lab_path).astype(bool)
        inter, union = inter + int((pred & lab).sum()), union + int((pred | lab).sum())
    return inter / union


def _coloured(png: Path) -> float:
    """The share of a PNG's pixels drawn in colour (not white, grey or black): images and data lines, not the
    axes, ticks and titles an empty figure still has."""
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG"
        a = np.asarray(im.convert("RGB")).astype(int)
    return float(((a.max(-1) - a.min(-1)) > 60).mean())


#: the figures each notebook shows inline: 01 the chips, the band histograms and the cloud fractions; 02 the
#: teacher's probabilities; 03 the training curves and the teacher-vs-student masks
FIGURES = {"01_explore_data": 3, "02_teacher_nnunet": 1, "03_distill_student": 2, "04_onboard_export": 0}


def test_notebooks_run_in_order(nb_env):
    data, work = nb_env / "data", nb_env / "work"
    shown = {}
    nb = run_notebook("01_explore_data")
    shown["01_explore_data"] = _images(nb)
    text = _text(nb)
    meta = pd.read_csv(data / "train_metadata.csv")
    assert f"{len(meta)} training chips from {meta.location.nunique()} locations" in text
    folds = pd.read_csv(work / "folds.csv")
    assert sorted(folds.chip_id) == sorted(meta.chip_id) and set(folds.fold) == {0, 1, 2}
    assert (folds.groupby("location").fold.nunique() == 1).all()
    assert _coloured(work / "01_chips.png") > 0.05

    nb = run_notebook("02_teacher_nnunet")
    shown["02_teacher_nnunet"] = _images(nb)
    text = _text(nb)
    labels = data / "test_labels"
    teacher_j = _number(r"teacher global Jaccard (\d\.\d{4}) on 12 chips", text)
    assert teacher_j == pytest.approx(_global_jaccard(work / "teacher_masks", labels), abs=5e-5)
    soft = sorted((work / "teacher_soft").glob("*.tif"))
    assert [p.name for p in soft] == sorted(p.name for p in labels.glob("*.tif"))
    # the masks' threshold, fitted on fold 0's validation chips and recorded for the teacher
    fitted = json.loads((work / "nnunet" / "teacher.json").read_text())["threshold"]
    assert f"threshold {fitted['threshold']:g} on {fitted['n_chips']} validation chips" in text
    for p in soft:  # the soft labels are the probabilities behind the masks (probability > threshold = cloud)
        prob = tifffile.imread(p).astype(np.float32) / 255
        mask = tifffile.imread(work / "teacher_masks" / p.name)
        assert prob.shape == mask.shape == (128, 128)
        sure = np.abs(prob - fitted["threshold"]) > 1 / 255
        assert ((prob > fitted["threshold"]) == (mask > 0))[sure].all()

    nb = run_notebook("03_distill_student")
    shown["03_distill_student"] = _images(nb)
    text = _text(nb)
    assert _number(r"teacher: global Jaccard (\d\.\d{4})", text) == pytest.approx(teacher_j, abs=1e-9)
    student_j = _number(r"student: global Jaccard (\d\.\d{4})", text)
    assert student_j == pytest.approx(_global_jaccard(work / "student_masks", labels), abs=5e-5)
    import torch

    from cloudkd.data import normalise, read_chip, resolve_split
    from cloudkd.student.runs import load_student

    from scipy.ndimage import binary_dilation

    # the notebook fits the rule on the validation chips and records it in the run; its masks apply that rule
    rule = json.loads((work / "student" / "student.json").read_text())["rule"]
    t, d = rule["threshold"], rule["dilate"]
    assert f"rule fitted on {rule['fitted_on']['n_chips']} validation chips: threshold {t:g}, dilation {d} px" in text
    model, test = load_student(work / "student"), resolve_split(data, "test")
    for c in test.chip_ids():  # the student's masks: its logits above the threshold's, dilated, nodata clear
        refl = read_chip(test.chip_dir(c))
        with torch.no_grad():
            above = (model(torch.from_numpy(normalise(refl))[None])[0, 0] > np.log(t / (1 - t))).numpy()
        want = (binary_dilation(above, iterations=d) if d else above) & ~(refl == 0).all(0)
        np.testing.assert_array_equal(tifffile.imread(work / "student_masks" / f"{c}.tif"), want.astype(np.uint8))

    nb = run_notebook("04_onboard_export")
    shown["04_onboard_export"] = _images(nb)
    text = _text(nb)
    rows = [r for r in text.splitlines() if r.startswith("| ") and not r.startswith("| method")]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["thresholding", "nnunet_teacher", "student_torch", "student_onnx_fp32", "student_onnx_int8"]
    bench_j = {n: float(r.rstrip(" |").split("|")[-1]) for n, r in zip(names, rows)}
    # the bench runs the teacher batched (float32), teacher predict through nnU-Net's float16 window: a pixel
    # or two may flip (test_teacher.py), one in the fourth decimal here
    assert bench_j["nnunet_teacher"] == pytest.approx(teacher_j, abs=2e-4)
    assert bench_j["student_torch"] == pytest.approx(student_j, abs=1e-9)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(work / "export" / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([normalise(read_chip(test.chip_dir(c))) for c in test.chip_ids()[:2]])
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (2, 1, 128, 128)
    assert _coloured(work / "downlink.png") > 0.005  # its three curves
    with zipfile.ZipFile(work / "submission.zip") as z:
        assert "main.py" in z.namelist()
    # the packed model, run as the runtime would, scores what the student's own masks score
    sub_j = _number(r"'jaccard': (?:np\.float64\()?(\d\.\d+)", text)
    assert sub_j == pytest.approx(_global_jaccard(work / "student_masks", labels), abs=1e-9)

    # every figure a notebook draws shows inline, also after nnU-Net (whose logger switches matplotlib to Agg when
    # imported) has trained or loaded the teacher: cloudkd's workspace puts the backend back
    assert shown == FIGURES, shown
