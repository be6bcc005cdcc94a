"""The submission: frozen main.py, packing, the runtime emulator, the validator and the entrypoint script."""

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from cloudkd.cli import app
from cloudkd.data import read_mask, resolve_split
from cloudkd.student.predict import predict_folder
from cloudkd.evaluate.scoring import score_folder
from cloudkd.student.runs import load_student
from cloudkd.submission.emulate import runtime_test
from cloudkd.submission.pack import MAIN_PY, RUNTIME_MODULES, pack
from cloudkd.submission.validate import MAX_BYTES, validate

from conftest import wedged_copy, write_chip

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO / "src" / "cloudkd" / "submission" / "validate.py"
ENTRYPOINT = REPO / "submission" / "entrypoint.sh"
runner = CliRunner()
SIZE = 96  # the small generated chips


@pytest.fixture(scope="module")
def packed(student, tmp_path_factory):
    z = tmp_path_factory.mktemp("zip") / "submission.zip"
    pack(student, z, threshold=0.5, tta=True, batch_size=3, chip_size=SIZE)
    return z


# ---------------------------------------------------------------------------------------------------- main.py
ALLOWED_IMPORTS = {"hashlib", "json", "logging", "os", "sys", "tempfile", "time", "pathlib", "math", "typing", "numpy",
                   "torch", "tifffile", "PIL", "cloudkd_rt", "segmentation_models_pytorch"}


@pytest.mark.parametrize("path", [MAIN_PY, VALIDATOR, *RUNTIME_MODULES])
def test_runtime_code_parses_as_python39_and_imports_only_the_runtime_image(path):
    tree = ast.parse(Path(path).read_text(), filename=str(path), feature_version=(3, 9))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods.add(node.module.split(".")[0])
    assert mods <= ALLOWED_IMPORTS | {"argparse"}, mods - ALLOWED_IMPORTS
    assert "onnxruntime" not in mods and "cloudkd" not in mods


def test_pack_writes_main_py_library_modules_weights_and_config(student, packed, tmp_path):
    with zipfile.ZipFile(packed) as z:
        names = set(z.namelist())
        assert {"main.py", "assets/config.json", "assets/model.pt", "assets/cloudkd_rt/__init__.py"} <= names
        assert z.read("main.py") == MAIN_PY.read_bytes()
        for src, name in RUNTIME_MODULES.items():  # the library's own code, byte for byte
            assert z.read(f"assets/cloudkd_rt/{name}") == Path(src).read_bytes()
        cfg = json.loads(z.read("assets/config.json"))
        z.extract("assets/model.pt", tmp_path)
    assert cfg["model"]["arch"] == "compact_unet" and cfg["model"]["kwargs"]["widths"] == [8, 16, 24, 32, 72]
    assert cfg["tta"] is True and cfg["threshold"] == 0.5 and cfg["chip_size"] == SIZE and cfg["params"] == 152_841
    state = torch.load(tmp_path / "assets" / "model.pt", map_location="cpu")  # a plain state dict
    ref = load_student(student).state_dict()
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
    r = runner.invoke(app, ["pack", "--checkpoint", str(student / "checkpoints" / "best.ckpt"), "--out",
                            str(tmp_path / "s.zip")])
    assert r.exit_code == 0, r.output
    assert f"{(tmp_path / 's.zip').stat().st_size:,} bytes" in r.output and "152,841 params" in r.output
    r = runner.invoke(app, ["pack", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.zip")])
    assert r.exit_code != 0 and "nowhere: checkpoint not found" in r.output + str(r.exception)
    assert not (tmp_path / "x.zip").exists()


def test_main_py_output_equals_the_library_prediction(student, packed, small_data, tmp_path):
    v = runtime_test(packed, small_data, labels=small_data, keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    test = resolve_split(small_data, "test")
    assert v["n_chips"] == len(test.chip_ids()) and v["returncode"] == 0
    # the same batches as the packed main.py (batch_size=3): other batch shapes take other CPU kernels, whose float
    # rounding can flip a pixel whose logit is within ~1e-6 of the threshold
    lib = predict_folder(load_student(student), test.features_dir, tmp_path / "lib", tta=True, batch_size=3,
                         progress=False)
    assert lib["n_chips"] == v["n_chips"]
    for cid in test.chip_ids():
        ours = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(ours, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid
    assert v["jaccard"] == pytest.approx(score_folder(tmp_path / "lib", test.labels_dir).jaccard)
    assert "done: 10 masks for 10 chips (0 with a fallback, 0 failed)" in v["log"]
    assert os.listdir(tmp_path / "root" / "predictions") == [f"{c}.tif" for c in test.chip_ids()] or \
        sorted(os.listdir(tmp_path / "root" / "predictions")) == sorted(f"{c}.tif" for c in test.chip_ids())
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.startswith(".cloudkd-tmp")]


def test_main_py_equals_cloudkd_predict_on_chips_with_nodata_wedges_at_a_packed_threshold(student, small_data,
                                                                                           tmp_path):
    """The one prediction rule: on chips with nodata wedges (all bands 0), the packed main.py (threshold 0.3, flip
    TTA) writes the masks `cloudkd student predict --threshold 0.3 --tta` writes, with every wedge pixel clear,
    although the model alone calls part of the wedges cloud."""
    from cloudkd.common.infer import masks_from_logits, nodata_mask, predict_logits
    from cloudkd.data import normalise, read_chip

    test = resolve_split(small_data, "test")
    wedges = wedged_copy(test, tmp_path / "wedged")
    feats = tmp_path / "wedged" / "test_features"
    z = tmp_path / "submission.zip"
    pack(student, z, threshold=0.3, tta=True, batch_size=3, chip_size=SIZE)
    v = runtime_test(z, tmp_path / "wedged", keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    r = runner.invoke(app, ["student", "predict", "--model", str(student), "--features", str(feats), "--out",
                            str(tmp_path / "lib"), "--threshold", "0.3", "--tta", "--batch", "3"])
    assert r.exit_code == 0, r.output
    model = load_student(student)
    ids = sorted(wedges)
    refl = np.stack([read_chip(feats / cid) for cid in ids])
    nodata = nodata_mask(refl)  # the wedges, and any nodata the generator put in these chips
    assert all(nodata[i][wedges[cid]].all() for i, cid in enumerate(ids))
    # the model alone, in main.py's batches of 3 (other batch shapes round differently near the threshold)
    raw = np.concatenate([masks_from_logits(predict_logits(model, torch.from_numpy(normalise(refl[i:i + 3])),
                                                           tta=True), 0.3) for i in range(0, len(ids), 3)])
    for i, cid in enumerate(ids):
        ours = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(ours, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid
        assert ours[nodata[i]].max() == 0, cid
        assert np.array_equal(ours[~nodata[i]], raw[i][~nodata[i]]), cid  # nothing changes outside nodata
    cloudy_wedge_pixels = int(raw[nodata].sum())
    assert cloudy_wedge_pixels > 0  # without the nodata rule the wedges would not be all clear


def test_threshold_is_checked_on_every_command_that_makes_masks(student, small_data, tmp_path):
    test = resolve_split(small_data, "test")
    o = ["--out", str(tmp_path / "o")]
    for args in (["student", "predict", "--model", str(student), "--features", str(test.features_dir), *o],
                 ["predict", "--model", str(student), "--features", str(test.features_dir), *o],
                 ["teacher", "predict", "--features", str(test.features_dir), "--masks-out", str(tmp_path / "o")],
                 ["onboard", "export", "--checkpoint", str(student), *o], ["onboard", "bench", *o],
                 ["onboard", "predict-scene", str(tmp_path), "--model", str(student), *o],
                 ["submission", "pack", "--checkpoint", str(student), *o]):
        r = runner.invoke(app, args + ["--threshold", "1.5"])
        assert r.exit_code == 2 and "(0, 1)" in r.output, (args, r.output)
    assert not (tmp_path / "o").exists()


def smp_run(tmp_path, spec):
    """A student run folder holding an smp model with seed-0 random weights and random BatchNorm statistics (so
    its masks are not all one class)."""
    from cloudkd.student.models import build_model

    torch.manual_seed(0)
    model = build_model(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    run = tmp_path / "smp_run"
    run.mkdir()
    torch.save(model.state_dict(), run / "student.pt")
    (run / "student.json").write_text(json.dumps({"model": spec, "model_kwargs": {}}))
    return run


def test_an_smp_model_packs_and_main_py_rebuilds_it_with_segmentation_models_pytorch(small_data, tmp_path):
    """main.py's smp branch: an smp U-Net (random weights) packed and run by main.py writes the masks the library
    writes with the same weights."""
    run = smp_run(tmp_path, "smp:Unet:resnet18")
    z = tmp_path / "smp.zip"
    r = pack(run, z, threshold=0.5, batch_size=2, chip_size=SIZE)
    cfg = json.loads(zipfile.ZipFile(z).read("assets/config.json"))
    assert cfg["model"] == {"arch": "smp", "name": "Unet", "encoder": "resnet18", "kwargs": {}}
    assert r.params == sum(p.numel() for p in load_student(run).parameters())
    test = resolve_split(small_data, "test")
    v = runtime_test(z, small_data, keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    lib = predict_folder(load_student(run), test.features_dir, tmp_path / "lib", batch_size=2, progress=False)
    assert lib["n_chips"] == v["n_chips"] == len(test.chip_ids())
    cloud = 0
    for cid in test.chip_ids():
        ours = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(ours, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid
        cloud += int(ours.sum())
    assert 0 < cloud < len(test.chip_ids()) * SIZE * SIZE  # the comparison is not between two blank sets


@pytest.mark.parametrize("preset,stem", [("unet-s2d2", 2), ("unet-s2d4", 4), ("unet-s2d2r", 2)])
def test_a_space_to_depth_student_packs_and_main_py_runs_it(small_data, tmp_path, preset, stem):
    """main.py rebuilds a compact U-Net from its config, the space-to-depth stem included, and writes the masks
    the library writes with the same weights."""
    from cloudkd.student.models import build_model

    torch.manual_seed(0)
    model = build_model(preset)
    run = tmp_path / preset
    run.mkdir()
    torch.save(model.state_dict(), run / "student.pt")
    (run / "student.json").write_text(json.dumps({"model": preset, "model_kwargs": {}}))
    z = tmp_path / f"{preset}.zip"
    pack(run, z, threshold=0.5, batch_size=3, chip_size=SIZE)
    assert json.loads(zipfile.ZipFile(z).read("assets/config.json"))["model"]["kwargs"]["stem"] == stem
    test = resolve_split(small_data, "test")
    v = runtime_test(z, small_data, keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    predict_folder(load_student(run), test.features_dir, tmp_path / "lib", batch_size=3, progress=False)
    for cid in test.chip_ids():
        ours = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(ours, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid


def test_runtime_test_cli_verdict_holds_the_real_score_and_main_pys_true_counts(packed, small_data, tmp_path):
    """The verdict's Jaccard is the global Jaccard of the masks main.py wrote, computed here by hand from the files;
    main.py's run summary (in the verdict and printed) counts the masks really written and fingerprints the packed
    weights."""
    import hashlib

    r = runner.invoke(app, ["runtime-test", "--zip", str(packed), "--data", str(small_data / "test_features"),
                            "--labels", str(small_data / "test_labels"), "--json", str(tmp_path / "v.json"),
                            "--keep", str(tmp_path / "root"), "--quiet"])
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "v.json").read_text())
    test = resolve_split(small_data, "test")
    pred = tmp_path / "root" / "predictions"
    files = sorted(pred.iterdir())
    assert [f.name for f in files] == sorted(f"{c}.tif" for c in test.chip_ids())
    inter = union = 0
    for f in files:
        p = np.array(Image.open(f)).astype(bool)
        t = tifffile.imread(small_data / "test_labels" / f.name).astype(bool)
        inter += int((p & t).sum())
        union += int((p | t).sum())
    assert 0 < inter < union  # neither a perfect nor an empty overlap: the ratio below is a real one
    assert v["ok"] and v["jaccard"] == pytest.approx(inter / union, abs=1e-12)
    assert f"global Jaccard {inter / union:.4f}" in r.output
    s = v["summary"]
    assert s["chips_expected"] == s["chips_written"] == len(files) == v["n_chips"] == 10
    assert s["fallback"] == {} and s["failed"] == {} and v["fallback"] == [] and v["fallback_documented"] == {}
    assert s["threshold"] == 0.5 and s["dilate"] == 0 and s["tta"] is True and s["model"] == "unet-s" \
        and s["device"] == "cpu"
    with zipfile.ZipFile(packed) as z:
        assert s["assets"] == {"model.pt": hashlib.sha256(z.read("assets/model.pt")).hexdigest(),
                               "config.json": hashlib.sha256(z.read("assets/config.json")).hexdigest()}
    assert 0 < s["seconds"] <= v["seconds"]
    assert (f"main.py's summary: 10 of 10 masks written, 0 fallback, 0 failed; model unet-s (model.pt sha256 "
            f"{s['assets']['model.pt'][:12]}), threshold 0.5, dilate 0 px, tta True") in r.output


def test_real_chips(student, real_chips, tmp_path):
    z = pack(student, tmp_path / "s.zip", chip_size=512).zip_path
    v = runtime_test(z, real_chips, keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    assert v["n_chips"] == 5
    for f in (tmp_path / "root" / "predictions").iterdir():
        assert f.stat().st_size <= MAX_BYTES
        m = np.array(Image.open(f))
        assert m.shape == (512, 512) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


# ---------------------------------------------------------------------------------------------------- broken chips
def _good(rng):
    return rng.integers(200, 6000, size=(4, SIZE, SIZE)).astype(np.uint16)


def _broken_features(root: Path) -> dict:
    """A test_features folder with good chips and one chip per kind of damage; returns {chip_id: kind}."""
    rng = np.random.default_rng(0)
    f = root / "test_features"
    kinds = {}

    def chip(cid, kind, arr=None):
        kinds[cid] = kind
        if arr is not None:
            write_chip(f, cid, arr)
        else:
            (f / cid).mkdir(parents=True)
        return f / cid

    for i in range(3):
        chip(f"good{i}", "good", _good(rng))
    (chip("miss", "missing band", _good(rng)) / "B08.tif").unlink()
    (chip("corr", "corrupt tiff", _good(rng)) / "B03.tif").write_bytes(b"II*\x00garbage" * 10)
    (chip("empt", "empty file", _good(rng)) / "B02.tif").write_bytes(b"")
    tifffile.imwrite(chip("shap", "wrong shape", _good(rng)) / "B04.tif", np.ones((48, 48), np.uint16))
    nan = _good(rng).astype(np.float32)
    nan[:, :10, :10] = np.nan
    nan[0, 50:, 50:] = np.inf
    chip("nans", "NaN and inf values", nan)
    chip("zero", "all nodata", np.zeros((4, SIZE, SIZE), np.uint16))
    chip("none", "empty folder")
    tifffile.imwrite(chip("thrd", "3-D band", _good(rng)) / "B03.tif", np.ones((3, SIZE, SIZE), np.uint16))
    tifffile.imwrite(chip("bool", "boolean band", _good(rng)) / "B02.tif", np.ones((SIZE, SIZE), bool))
    junk = chip("junk", "only unrelated files")
    (junk / "notes.txt").write_text("nothing here")
    half = _good(rng)
    half[:, :, : SIZE // 2] = 0
    chip("half", "half nodata", half)
    (f / ".ipynb_checkpoints").mkdir()  # hidden folders and stray files are not chips
    (f / "stray.txt").write_text("not a chip")
    return kinds


def test_broken_chips_each_still_get_a_valid_mask_and_a_log_line(packed, tmp_path):
    kinds = _broken_features(tmp_path / "data")
    v = runtime_test(packed, tmp_path / "data" / "test_features", keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    assert v["n_chips"] == len(kinds) and v["missing"] == [] and v["extra"] == []
    log = v["log"]
    pred = tmp_path / "root" / "predictions"
    for cid, kind in kinds.items():
        m = np.array(Image.open(pred / f"{cid}.tif"))
        assert m.shape == (SIZE, SIZE) and set(np.unique(m)) <= {0, 1}, kind
        if kind not in ("good", "half nodata"):  # partial nodata is normal data, not a fallback
            assert any(line.split(" WARNING ")[-1].startswith(f"{cid}:") for line in log.splitlines()), kind
    for cid in ("zero", "none", "junk"):  # nothing to look at: all clear, nothing discarded on a guess
        assert np.array(Image.open(pred / f"{cid}.tif")).max() == 0
    assert np.array(Image.open(pred / "half.tif"))[:, : SIZE // 2].max() == 0  # nodata pixels are clear
    assert "B08.tif: missing" in log and "B04.tif: wrong shape (48, 48)" in log and "NaN/inf" in log
    assert "(10 with a fallback, 0 failed)" in log
    # the run summary names exactly the damaged chips, each with its reason, and the verdict takes them as the
    # documented fallbacks
    broken = sorted(c for c, kind in kinds.items() if kind not in ("good", "half nodata"))
    s = v["summary"]
    assert sorted(s["fallback"]) == broken and list(v["fallback_documented"]) == broken and v["fallback"] == []
    assert s["chips_expected"] == s["chips_written"] == len(kinds) and s["failed"] == {}
    assert s["fallback"]["miss"].startswith("B08.tif: missing; missing bands filled with the mean of the 3 good")
    assert s["fallback"]["zero"] == "all pixels are nodata; all-clear mask"
    assert s["fallback"]["none"] == "B02.tif: missing; B03.tif: missing; B04.tif: missing; B08.tif: missing; " \
                                   "no readable band; all-clear mask"


def test_a_band_filled_from_the_others_is_the_mean_of_the_good_bands(packed, tmp_path):
    """The documented fallback, checked against the model run by hand on the filled chip."""
    rng = np.random.default_rng(3)
    arr = _good(rng)
    write_chip(tmp_path / "data" / "test_features", "fill", arr)
    (tmp_path / "data" / "test_features" / "fill" / "B03.tif").unlink()
    v = runtime_test(packed, tmp_path / "data" / "test_features", keep=tmp_path / "root", echo=False)
    assert v["ok"]
    from cloudkd.data import normalise
    from cloudkd.common.infer import masks_from_logits, predict_logits

    model = load_student(json.loads((tmp_path / "root" / "assets" / "config.json").read_text())["source_run"])
    refl = arr.astype(np.float32) / 10000
    refl[1] = refl[[0, 2, 3]].mean(axis=0)
    want = masks_from_logits(predict_logits(model.eval(), torch.from_numpy(normalise(refl)[None]), tta=True))[0]
    assert np.array_equal(np.array(Image.open(tmp_path / "root" / "predictions" / "fill.tif")), want)


# ---------------------------------------------------------------------------------------------------- validation
def test_validator_catches_every_rule(tmp_path):
    f = tmp_path / "test_features"
    for cid in ("aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff"):
        (f / cid).mkdir(parents=True)
    p = tmp_path / "predictions"
    p.mkdir()
    ok = np.zeros((512, 512), np.uint8)
    Image.fromarray(ok).save(p / "aaaa.tif")
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(p / "bbbb.tif")  # wrong shape
    Image.fromarray(np.full((512, 512), 2, np.uint8)).save(p / "cccc.tif")  # values
    tifffile.imwrite(p / "dddd.tif", np.zeros((512, 512), np.uint16))  # too large (uint16)
    (p / "eeee.tif").write_bytes(b"not an image")  # unreadable
    Image.fromarray(ok).save(p / "zzzz.tif")  # extra; ffff missing
    v = validate(f, p)
    assert not v["ok"] and v["n_chips"] == 6
    assert v["missing"] == ["ffff"] and v["extra"] == ["zzzz.tif"]
    assert set(v["invalid"]) == {"bbbb.tif", "cccc.tif", "dddd.tif", "eeee.tif"}
    assert "wrong shape" in v["invalid"]["bbbb.tif"] and "values" in v["invalid"]["cccc.tif"]
    assert "too large" in v["invalid"]["dddd.tif"] and "PIL" in v["invalid"]["eeee.tif"]
    p2 = tmp_path / "p2"
    p2.mkdir()
    for cid in ("aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff"):
        Image.fromarray(ok).save(p2 / f"{cid}.tif")
    assert validate(f, p2)["ok"]


def test_runtime_test_fails_with_reasons_when_main_py_misbehaves(packed, small_data, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "main.py":  # skips the first chip and exits with an error
                data = data.replace(b"    chips = list_chips()\n", b"    chips = list_chips()[1:]\n")
                data = data.replace(b"    return 1 if failed else 0", b"    return 3")
            dst.writestr(name, data)
    r = runner.invoke(app, ["runtime-test", "--zip", str(bad), "--data", str(small_data), "--json",
                            str(tmp_path / "v.json"), "--quiet"])
    assert r.exit_code == 1
    v = json.loads((tmp_path / "v.json").read_text())
    assert not v["ok"] and len(v["missing"]) == 1 and v["returncode"] == 3
    assert "main.py exited with code 3" in r.output and "1 missing prediction" in r.output
    assert v["summary"]["chips_expected"] == v["summary"]["chips_written"] == 9  # what main.py believed it did
    assert "FAIL: main.py's summary counts 9 chip(s); test_features holds 10" in r.output
    nomain = tmp_path / "nomain.zip"
    with zipfile.ZipFile(nomain, "w") as z:
        z.writestr("assets/config.json", "{}")
    r = runner.invoke(app, ["runtime-test", "--zip", str(nomain), "--data", str(small_data), "--quiet"])
    assert r.exit_code == 1 and "no main.py" in r.output


#: main.py's line that logs the run summary, and what each summary test puts in its place
SUMMARY_LINE = b'    log.info("%s%s", SUMMARY_PREFIX, json.dumps(summary, sort_keys=True))\n'
_SUMMARY_EDITS = {
    "missing": (b"", "main.py's log has no run summary (a line 'cloudkd-summary {...}')"),
    "not json": (b'    log.info("%s%s", SUMMARY_PREFIX, json.dumps(summary)[:-1])\n',
                 "main.py's run summary is malformed: not JSON"),
    "count not a number": (b'    summary["chips_written"] = "all"\n' + SUMMARY_LINE,
                           "main.py's run summary is malformed: 'chips_written' is 'all', not an integer"),
    "twice": (SUMMARY_LINE * 2, "main.py's log has 2 run summaries"),
    "written miscounted": (b'    summary["chips_written"] += 1\n' + SUMMARY_LINE,
                           "main.py's summary says it wrote 11 mask(s); predictions holds 10 of the chips' masks"),
    "fallback on a sound chip": (b'    summary["fallback"][chips[0]] = "B02.tif: missing"\n' + SUMMARY_LINE,
                                 "main.py gave a fallback mask to 1 chip(s) whose bands read fine: {first} (e.g. "
                                 "{first}: B02.tif: missing)"),
    "fallback on no chip": (b'    summary["fallback"]["zzzz"] = "no readable band"\n' + SUMMARY_LINE,
                            "main.py's summary gives a fallback to 1 chip(s) that are not in test_features: zzzz"),
}


@pytest.mark.parametrize("case", list(_SUMMARY_EDITS))
def test_runtime_verdict_comes_from_main_pys_run_summary(packed, small_data, tmp_path, case):
    """main.py writes all its masks correctly each time; only its run summary is missing, malformed or untrue,
    and the verdict fails saying so."""
    edit, says = _SUMMARY_EDITS[case]
    z = tmp_path / "edited.zip"
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(z, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "main.py":
                assert data.count(SUMMARY_LINE) == 1
                data = data.replace(SUMMARY_LINE, edit)
            dst.writestr(name, data)
    r = runner.invoke(app, ["runtime-test", "--zip", str(z), "--data", str(small_data), "--json",
                            str(tmp_path / "v.json"), "--quiet"])
    assert r.exit_code == 1, r.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["returncode"] == 0 and v["n_chips"] == 10 and not v["missing"] and not v["invalid"]
    says = says.replace("{first}", resolve_split(small_data, "test").chip_ids()[0])
    fails = [line for line in r.output.splitlines() if line.startswith("FAIL: ")]
    assert len(fails) == 1 and fails[0].startswith(f"FAIL: {says}"), r.output
    assert (v["summary"] is None) == (case in ("missing", "not json", "count not a number", "twice"))


def test_runtime_test_shows_the_log_of_a_failing_main_py_it_does_not_keep(small_data, tmp_path, monkeypatch):
    """Issue 29: with --quiet the FAIL line pointed to main.log in the emulated root, which was deleted; and an
    interpreter given by a relative path ran main.py from inside that root (a traceback, not a verdict)."""
    z = tmp_path / "fails.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("main.py", "import sys\nprint('loading the model')\nprint('boom: assets/model.pt is missing')\n"
                              "sys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    python = os.path.join("bin", "python")  # relative, as a user types it
    r = runner.invoke(app, ["runtime-test", "--zip", "fails.zip", "--data", str(small_data), "--quiet", "--python",
                            python])
    assert r.exit_code == 1, r.output
    assert "FAIL: main.py exited with code 3 (the end of its log follows; --keep FOLDER keeps main.log)" in r.output
    assert "  | boom: assets/model.pt is missing" in r.output and "(log: " not in r.output
    r = runner.invoke(app, ["runtime-test", "--zip", "fails.zip", "--data", str(small_data), "--python", python])
    assert r.exit_code == 1 and "main.py exited with code 3 (its log is above;" in r.output, r.output
    r = runner.invoke(app, ["runtime-test", "--zip", "fails.zip", "--data", str(small_data), "--quiet", "--keep",
                            "rt"])
    log = tmp_path / "rt" / "main.log"
    assert r.exit_code == 1 and f"main.py exited with code 3 (log: {log})" in r.output, r.output
    assert "boom" in log.read_text() and "the end of main.py's log" not in r.output


# ---------------------------------------------------------------------------------------------------- entrypoint
def test_entrypoint_script_unzips_runs_validates_and_tars(packed, small_data, tmp_path):
    root = tmp_path / "codeexecution"
    shutil.copytree(small_data / "test_features", root / "data" / "test_features")
    (root / "submission").mkdir()
    shutil.copy(packed, root / "submission" / "submission.zip")
    env = {**os.environ, "CLOUDKD_ROOT": str(root), "CLOUDKD_VALIDATOR": str(VALIDATOR),
           "CLOUDKD_CHIP_SIZE": str(SIZE), "PYTHON": sys.executable}
    p = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "validation passed: 10 chips" in p.stdout
    assert (root / "submission" / "predictions.tar.gz").is_file()
    env["CLOUDKD_CHIP_SIZE"] = "512"  # the challenge's size: these 96-px masks must fail validation
    p = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "wrong shape" in p.stdout
