"""Issue 29, "Trust": one threshold (the run's), one chip-shape rule, fixed-batch ONNX models, label masks given
as soft labels, and whole scenes of float or NaN values."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch

from cloudkd.common.infer import nodata_mask, predict_masks
from cloudkd.data import normalise, read_chip, read_mask, resolve_split
from cloudkd.student.runs import load_student

from conftest import invoke, one_line_refusal, write_chip

REPO = Path(__file__).resolve().parents[2]
#: a threshold no command defaults to by chance
T = 0.3
SIZE = 96  # the small generated chips


@pytest.fixture(scope="module")
def run_at_t(student, tmp_path_factory):
    """A copy of the shared student run whose recorded (training) threshold is T instead of 0.5."""
    run = tmp_path_factory.mktemp("run_t") / "run"
    shutil.copytree(student, run)
    info = json.loads((run / "student.json").read_text())
    info["config"]["threshold"] = T
    (run / "student.json").write_text(json.dumps(info, indent=2))
    return run


@pytest.fixture(scope="module")
def export_at_t(run_at_t, tmp_path_factory):
    """`cloudkd onboard export` of run_at_t, no --threshold: fp32 (dynamic) and fp32_b1 (fixed batch 1, 96 px)."""
    from cloudkd.onboard.export import export

    out = tmp_path_factory.mktemp("export_t") / "exp"
    export(run_at_t, out, size=SIZE, int8=False, measure_memory=False)
    return out


def _rule(model, feats, ids, threshold, batch=8):
    """The one prediction rule by hand: the model's logits in batches of ``batch``, at ``threshold``."""
    out = {}
    for i in range(0, len(ids), batch):
        group = ids[i:i + batch]
        refl = np.stack([read_chip(feats / c) for c in group])
        masks = predict_masks(model, torch.from_numpy(normalise(refl)), nodata_mask(refl), threshold)
        out.update(zip(group, masks))
    return out


# ------------------------------------------------------------------------------------------------ one threshold
def test_commands_default_to_the_runs_recorded_threshold(run_at_t, export_at_t, small_data, tmp_path, capsys):
    """A run that recorded threshold 0.3: student predict, the real-chip benchmark's student and ONNX methods
    and the export (its ONNX models and export.json) all use 0.3 when no --threshold is given."""
    from cloudkd.common.onnx import OnnxModel, ort_session
    from cloudkd.evaluate.realchips import onnx_method, student_method

    test = resolve_split(small_data, "test")
    ids = test.chip_ids()
    model = load_student(run_at_t)
    at_t, at_half = _rule(model, test.features_dir, ids, T), _rule(model, test.features_dir, ids, 0.5)
    assert sum(int((at_t[c] != at_half[c]).sum()) for c in ids) > 0  # the two thresholds give other masks

    code, text = invoke(["student", "predict", "--model", run_at_t, "--features", test.features_dir,
                         "--out", tmp_path / "pred"], capsys)
    assert code == 0, text
    for c in ids:
        assert np.array_equal(read_mask(tmp_path / "pred" / f"{c}.tif"), at_t[c]), c

    student_method(run_at_t).predict(test.features_dir, tmp_path / "bench_student")
    for c in ids:
        assert np.array_equal(read_mask(tmp_path / "bench_student" / f"{c}.tif"), at_t[c]), c

    # the export records the run's threshold in export.json and in every ONNX model; the ONNX methods use it
    from cloudkd.common.onnx import onnx_rule

    assert json.loads((export_at_t / "export.json").read_text())["threshold"] == T
    for name in ("model_fp32.onnx", "model_fp32_b1.onnx"):
        assert onnx_rule(ort_session(export_at_t / name))[0] == T
    onnx_at_t = _rule(OnnxModel(export_at_t / "model_fp32.onnx"), test.features_dir, ids, T)
    onnx_method(export_at_t / "model_fp32.onnx").predict(test.features_dir, tmp_path / "bench_onnx")
    for c in ids:
        assert np.array_equal(read_mask(tmp_path / "bench_onnx" / f"{c}.tif"), onnx_at_t[c]), c


def test_predict_scene_defaults_to_the_models_recorded_threshold(run_at_t, export_at_t, small_data, tmp_path,
                                                                 capsys):
    """predict-scene on a chip (a folder of band files) with the run folder and with its export: the mask is the
    rule at the recorded 0.3, and the output says so in its tags."""
    from cloudkd.onboard.scene import load_predictor, predict_scene

    chip = resolve_split(small_data, "test").chip_dir(resolve_split(small_data, "test").chip_ids()[0])
    for name, model in (("run", run_at_t), ("onnx", export_at_t / "model_fp32.onnx")):
        want = {}
        for t in (T, 0.5):
            predict_scene(chip, tmp_path / f"{name}_{t}.tif", load_predictor(model), tile=SIZE, overlap=0,
                          threshold=t, progress=False)
            want[t] = tifffile.imread(tmp_path / f"{name}_{t}.tif")
        assert (want[T] != want[0.5]).any()
        out = tmp_path / f"{name}.tif"
        code, text = invoke(["onboard", "predict-scene", chip, "--model", model, "--out", out, "--tile", SIZE,
                             "--overlap", 0], capsys)
        assert code == 0, text
        assert np.array_equal(tifffile.imread(out), want[T]), name
        with rasterio.open(out) as ds:
            assert ds.tags()["CLOUDKD_THRESHOLD"] == f"{T:g}"


def test_audit_defaults_to_the_judges_recorded_threshold(run_at_t, small_data, tmp_path, capsys):
    """evaluate audit --model RUN: the model's cloud fraction per chip is that of the rule at the run's 0.3."""
    train = resolve_split(small_data, "train")
    ids = train.chip_ids()
    model = load_student(run_at_t)
    at_t, at_half = _rule(model, train.features_dir, ids, T), _rule(model, train.features_dir, ids, 0.5)
    code, text = invoke(["evaluate", "audit", small_data, "--model", run_at_t, "--out", tmp_path / "audit",
                         "--batch", 8], capsys)
    assert code == 0, text
    rows = {r["chip_id"]: float(r["pred_fraction"]) for r in csv.DictReader(open(tmp_path / "audit" / "audit.csv"))}
    got = np.array([rows[c] for c in ids])
    want, half = np.array([at_t[c].mean() for c in ids]), np.array([at_half[c].mean() for c in ids])
    assert np.abs(got - want).max() < 1e-3 < np.abs(got - half).max()


def test_no_command_that_makes_masks_from_a_model_has_a_threshold_default_of_its_own():
    """--threshold is None on every command that makes masks from a model (the model's recorded threshold is
    taken), and no library function has a literal 0.5 default for a threshold."""
    import typer

    from cloudkd.cli import app

    root = typer.main.get_command(app)
    for path in (("student", "predict"), ("predict",), ("onboard", "export"), ("onboard", "predict-scene"),
                 ("onboard", "bench"), ("evaluate", "audit"), ("submission", "pack")):
        cmd = root
        for name in path:
            cmd = cmd.commands[name]
        opt = next(p for p in cmd.params if "--threshold" in getattr(p, "opts", ()))
        assert opt.default is None, (path, opt.default)
    literal = re.compile(r"threshold\w*\s*(:\s*[\w\[\]]+\s*)?=\s*0?\.50*\b")
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
            for p in [*(REPO / "src" / "cloudkd").rglob("*.py"), REPO / "submission" / "main.py"]
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if literal.search(line) and "label_threshold" not in line]
    assert not hits, hits


# ------------------------------------------------------------------------------------------------ chip shapes
def _with_misshapen_chip(small_data, folder, h=SIZE - 1, w=SIZE):
    """A features folder: three generated chips and one whose four bands are all h x w."""
    test = resolve_split(small_data, "test")
    feats = folder / "test_features"
    for c in test.chip_ids()[:3]:
        shutil.copytree(test.chip_dir(c), feats / c)
    rng = np.random.default_rng(0)
    write_chip(feats, "zzbad", rng.integers(1, 4000, (4, h, w)).astype(np.uint16))
    return feats


def test_a_chip_of_the_wrong_shape_is_refused_by_every_predictor(student, small_data, tmp_path, capsys):
    """A 95 x 96 chip among 96 x 96 ones: student predict, threshold predict and the teacher's predict_folder
    refuse it in one line naming the chip, before any mask is written; alone, it is refused as not square."""
    from cloudkd.baselines.threshold import ThresholdModel
    from cloudkd.common.errors import DataError
    from cloudkd.teacher.model import predict_folder as teacher_predict

    feats = _with_misshapen_chip(small_data, tmp_path / "data")
    ThresholdModel(0.3, 1.0).save(tmp_path / "threshold.json")
    for name, args in (("student", ["student", "predict", "--model", student]),
                       ("threshold", ["baseline", "threshold", "predict", "--model", tmp_path / "threshold.json"])):
        out = tmp_path / f"out_{name}"
        code, text = invoke(args + ["--features", feats, "--out", out], capsys)
        one_line_refusal(code, text, says=str(feats / "zzbad"))
        assert "95x96" in text and "96x96" in text, text
        assert not list(out.glob("*.tif")) if out.exists() else True, name

    class Teacher:  # never asked: the folder is refused first
        def predict_chip(self, refl, threshold):
            raise AssertionError("predicted a chip of a folder with a misshapen chip")

    with pytest.raises(DataError, match="zzbad: bands of 95x96"):
        teacher_predict(Teacher(), feats, tmp_path / "out_teacher", None, progress=False)
    assert not (tmp_path / "out_teacher").exists()

    alone = tmp_path / "alone" / "test_features"
    shutil.copytree(feats / "zzbad", alone / "zzbad")
    code, text = invoke(["student", "predict", "--model", student, "--features", alone, "--out",
                         tmp_path / "out_alone"], capsys)
    one_line_refusal(code, text, says="must be square")


def test_runtime_test_accepts_main_pys_documented_fallback_for_a_misshapen_chip(student, small_data, tmp_path):
    """main.py gives the 95 x 96 chip the documented fallback (an all-clear chip-size mask, logged); runtime-test
    passes and lists it as a documented fallback, while a sound chip's fallback still fails the verdict."""
    from PIL import Image

    from cloudkd.submission.emulate import runtime_test
    from cloudkd.submission.pack import pack

    feats = _with_misshapen_chip(small_data, tmp_path / "data")
    z = tmp_path / "submission.zip"
    pack(student, z, batch_size=3, chip_size=SIZE)
    v = runtime_test(z, feats, keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    assert list(v["fallback_documented"]) == ["zzbad"] and v["fallback"] == []
    m = np.array(Image.open(tmp_path / "root" / "predictions" / "zzbad.tif"))
    assert m.shape == (SIZE, SIZE) and m.max() == 0


# ------------------------------------------------------------------------------------------------ fixed-batch ONNX
def test_a_fixed_batch_onnx_model_runs_wherever_onnx_models_run(export_at_t, small_data, tmp_path, capsys):
    """model_fp32_b1.onnx (batch 1, 96 px), the on-board artefact when int8 misses its target: predict-scene,
    the audit and the real-chip benchmark run it in batches and give the dynamic model's masks; a tile of
    another size is refused in one line naming the model."""
    from cloudkd.evaluate.audit import audit_chips, load_model
    from cloudkd.data.chips import load_index
    from cloudkd.evaluate.realchips import onnx_method

    b1, dyn = export_at_t / "model_fp32_b1.onnx", export_at_t / "model_fp32.onnx"
    test = resolve_split(small_data, "test")
    ids = test.chip_ids()
    for name, m in (("b1", b1), ("dyn", dyn)):
        onnx_method(m).predict(test.features_dir, tmp_path / name)
    for c in ids:
        assert np.array_equal(read_mask(tmp_path / "b1" / f"{c}.tif"), read_mask(tmp_path / "dyn" / f"{c}.tif"))

    index = load_index(test, require_labels=True)
    rows = {n: audit_chips(index, load_model(m), T, batch=4, progress=False) for n, m in (("b1", b1), ("dyn", dyn))}
    assert [r["pred_fraction"] for r in rows["b1"]] == pytest.approx([r["pred_fraction"] for r in rows["dyn"]],
                                                                       abs=1e-3)

    scene = _band_folder(tmp_path / "scene", np.concatenate([np.stack([tifffile.imread(test.chip_dir(c) / f"{b}.tif")
                                                                       for b in ("B02", "B03", "B04", "B08")])
                                                             for c in ids[:2]], axis=2))  # 96 x 192
    for name, m in (("b1", b1), ("dyn", dyn)):
        code, text = invoke(["onboard", "predict-scene", scene, "--model", m, "--out", tmp_path / f"s_{name}.tif",
                             "--tile", SIZE, "--overlap", 32, "--batch", 4], capsys)
        assert code == 0, text
    assert np.array_equal(tifffile.imread(tmp_path / "s_b1.tif"), tifffile.imread(tmp_path / "s_dyn.tif"))
    code, text = invoke(["onboard", "predict-scene", scene, "--model", b1, "--out", tmp_path / "s_64.tif",
                         "--tile", 64, "--overlap", 16], capsys)
    one_line_refusal(code, text, says="fixed size 96x96")


# ------------------------------------------------------------------------------------------------ soft labels
def test_label_masks_given_as_soft_labels_are_refused(small_data, tmp_path, capsys):
    """distill --soft LABELS: one line saying these look like labels, before any training; the soft-label reader
    refuses a label file too. Real soft labels are never refused, even a chip the teacher calls clear throughout
    (its levels only 0 and 1)."""
    from cloudkd.common.errors import DataError
    from cloudkd.data.soft import read_soft, write_soft

    labels = resolve_split(small_data, "train").labels_dir
    code, text = invoke(["student", "distill", small_data, "--soft", labels, "--out", tmp_path / "run",
                         "--epochs", 1], capsys)
    one_line_refusal(code, text, says="looks like a folder of labels")
    assert "teacher predict --soft-out" in text and not (tmp_path / "run" / "checkpoints").exists()
    first = sorted(labels.glob("*.tif"))
    lab = next(p for p in first if read_mask(p).max() == 1)
    with pytest.raises(DataError, match="looks like a folder of labels"):
        read_soft(lab)

    soft = tmp_path / "soft"
    rng = np.random.default_rng(0)
    write_soft(soft / "a.tif", np.where(rng.random((32, 32)) < 0.5, 0.004, 0.0))  # sure clear: levels 0 and 1
    write_soft(soft / "b.tif", rng.random((32, 32)))
    from cloudkd.data.soft import check_soft_folder

    check_soft_folder(soft)
    assert read_soft(soft / "a.tif").max() == pytest.approx(1 / 255)


# ------------------------------------------------------------------------------------------------ scenes
def _band_folder(folder, bands, **kw):
    folder.mkdir(parents=True)
    for b, data in zip(("B02", "B03", "B04", "B08"), bands):
        tifffile.imwrite(folder / f"{b}.tif", data, **kw)
    return folder


@pytest.fixture(scope="module")
def pixel_onnx(tmp_path_factory):
    """A pixelwise model (a 1x1 convolution) as an ONNX file."""
    from cloudkd.onboard.export import export_onnx

    conv = torch.nn.Conv2d(4, 1, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([0.6, -0.2, 0.5, 0.3]).view(1, 4, 1, 1)
        conv.bias.fill_(-0.3)
    return export_onnx(conv, tmp_path_factory.mktemp("pix") / "pixel.onnx", dynamic=True, size=64)


def test_float_bands_are_refused_unless_scaled_and_nan_is_nodata(small_data, pixel_onnx, tmp_path, capsys):
    """Float band files (reflectance 0..1.5) without --scale: one line asking for --scale 1 (they used to be read
    as DN / 10000, 10000 times too dark). With --scale 1 they give the mask of the same reflectance stored as DN.
    NaN pixels are no data: clear, counted in the chip report's nodata_fraction, 0 in the probability."""
    test = resolve_split(small_data, "test")
    dn = np.stack([tifffile.imread(test.chip_dir(test.chip_ids()[0]) / f"{b}.tif") for b in ("B02", "B03", "B04",
                                                                                            "B08")])
    refl = dn.astype(np.float32) / 10000
    refl[:, :30, :40] = np.nan  # no data, the way float products say it
    dn[:, :30, :40] = 0
    as_dn = _band_folder(tmp_path / "dn", dn)
    as_float = _band_folder(tmp_path / "float", refl)

    code, text = invoke(["onboard", "predict-scene", as_float, "--model", pixel_onnx, "--out", tmp_path / "x.tif"],
                        capsys)
    one_line_refusal(code, text, says="--scale 1")
    assert not (tmp_path / "x.tif").exists()

    outs = {}
    for name, folder, extra in (("dn", as_dn, []), ("float", as_float, ["--scale", 1])):
        o = {k: tmp_path / f"{name}_{k}" for k in ("mask.tif", "prob.tif", "chips.csv")}
        code, text = invoke(["onboard", "predict-scene", folder, "--model", pixel_onnx, "--out", o["mask.tif"],
                             "--prob-out", o["prob.tif"], "--chip-report", o["chips.csv"], *extra], capsys)
        assert code == 0, text
        outs[name] = o
    mask = tifffile.imread(outs["float"]["mask.tif"])
    assert np.array_equal(mask, tifffile.imread(outs["dn"]["mask.tif"])) and 0 < mask.mean() < 1
    assert mask[:30, :40].max() == 0 and tifffile.imread(outs["float"]["prob.tif"])[:30, :40].max() == 0
    row = next(csv.DictReader(open(outs["float"]["chips.csv"])))
    assert float(row["nodata_fraction"]) == pytest.approx(30 * 40 / SIZE ** 2)
    assert float(row["cloud_fraction_of_valid"]) == pytest.approx(mask.sum() / (SIZE ** 2 - 30 * 40))
