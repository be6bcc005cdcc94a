"""The one output policy (cloudkd.common.outputs): cloudkd replaces only what it wrote, never writes an output
onto, into or around an input, refuses an existing file without --force, and locks a folder it writes.

The case tests reproduce data-loss cases of issue 29 (each failed on the code before the fix); the sweep at the
end drives every writing command with --force against a folder and a file cloudkd did not write and against its
own inputs: exit code 2, one line, nothing changed on disk."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from cloudkd.common.errors import DataError
from cloudkd.common import outputs as O
from conftest import invoke, make_dataset, snapshot, user_folder

EMPTY_ZIP = b"PK\x05\x06" + b"\0" * 18


def _one_line_refusal(code, text, says=None):
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2, text
    assert "Traceback" not in text, text
    assert lines and lines[-1].startswith("error: "), text
    if says is not None:
        assert says in lines[-1], text


_user_folder = user_folder


def _real_dataset(root):
    """A dataset cloudkd did not generate (no synth.json): two 32-px chips with labels."""
    rng = np.random.default_rng(0)
    chips = {f"c{i}": rng.integers(1, 5000, (4, 32, 32), dtype=np.uint16) for i in range(2)}
    labels = {c: (rng.random((32, 32)) > 0.5).astype(np.uint8) for c in chips}
    make_dataset(root, chips, "train", labels)
    return make_dataset(root, chips, "test", labels)


@pytest.fixture(scope="module")
def landsat_root(tmp_path_factory):
    from cloudkd.data.landsat.synth import Landsat38Config, synthesize_38cloud

    root = tmp_path_factory.mktemp("l8src") / "l8"
    synthesize_38cloud(root, Landsat38Config(n_train_scenes=1, n_test_scenes=1, min_grid=1, max_grid=1),
                       progress=False)
    return root


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from cloudkd.onboard.export import export_onnx

    conv = torch.nn.Conv2d(4, 1, 1)
    return export_onnx(conv, tmp_path_factory.mktemp("onnx") / "pixel.onnx", dynamic=True, size=64)


def _scene_file(path):
    """A 4-band GeoTIFF (uint16 DN) a user has: the input of predict-scene."""
    rng = np.random.default_rng(1)
    dn = rng.integers(1, 8000, (4, 96, 96), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", height=96, width=96, count=4, dtype="uint16", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 4000000)) as ds:
        ds.write(dn)
    return path


def _band_folder(folder):
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(folder / f"{band}.tif", "w", driver="GTiff", height=96, width=96, count=1,
                           dtype="uint16", crs="EPSG:32633",
                           transform=Affine(10, 0, 500000, 0, -10, 4000000)) as ds:
            ds.write(rng.integers(1, 8000, (96, 96), dtype=np.uint16), 1)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The module's rules
# ---------------------------------------------------------------------------------------------------------------
def test_outputs_apart_refuses_equal_inside_and_containing_with_links_and_relative_paths(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    O.outputs_apart([tmp_path / "out", None], [data, None])  # apart: fine
    O.outputs_apart([tmp_path / "data2"], [data])  # a common prefix of names is not containment
    for out, how in [(data, "is"), (data / "x" / "m.tif", "lies inside"), (tmp_path, "contains")]:
        with pytest.raises(DataError, match=f"this output {how} the input {data}"):
            O.outputs_apart([out], [data])
    os.symlink(data, tmp_path / "link")
    with pytest.raises(DataError, match="lies inside"):
        O.outputs_apart([tmp_path / "link" / "sub"], [data])
    monkeypatch.chdir(data)
    with pytest.raises(DataError, match="is the input"):
        O.outputs_apart([".."], [tmp_path])


def test_claim_folder_creates_marks_replaces_only_its_own_kind_with_force(tmp_path):
    run = tmp_path / "r"
    O.claim_folder(run, "runtime-root")
    assert O.folder_mark(run)["kind"] == "runtime-root" and O.folder_mark(run)["writer"] == "cloudkd"
    (run / "old.txt").write_text("x")
    with pytest.raises(DataError, match="--force to replace it"):
        O.claim_folder(run, "runtime-root")
    with pytest.raises(DataError, match="not a onnx-export"):
        O.claim_folder(run, "onnx-export", force=True)
    O.claim_folder(run, "runtime-root", force=True)
    assert sorted(p.name for p in run.iterdir()) == [O.MARK]
    user = _user_folder(tmp_path / "user")
    before = snapshot(user)
    with pytest.raises(DataError, match="was not written by cloudkd; remove it yourself"):
        O.claim_folder(user, "runtime-root", force=True)
    assert snapshot(user) == before
    (tmp_path / "empty").mkdir()
    O.claim_folder(tmp_path / "empty", "runtime-root")  # nothing to lose
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / O.DATASET_STAMP).write_text("{}")  # a generated dataset's stamp is cloudkd's mark for its kind
    assert O.folder_mark(gen)["kind"] == "dataset"
    with pytest.raises(DataError, match="not a runtime-root"):
        O.claim_folder(gen, "runtime-root", force=True)


def test_files_need_force_and_force_replaces_only_files_cloudkd_wrote(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("the user's\n")
    O.check_file(tmp_path / "new.json")
    with pytest.raises(DataError, match="exists; --force replaces it"):
        O.check_file(mine)
    with pytest.raises(DataError, match="was not written by cloudkd"):
        O.check_file(mine, force=True)
    with pytest.raises(DataError, match="is a folder"):
        O.check_file(tmp_path, force=True)
    ours = tmp_path / "ours.json"
    with O.file_outputs({"--json": ours}, "score-json", inputs=[mine]):
        ours.write_text("{}")
    O.check_file(ours, force=True)  # listed in the manifest: --force may replace it
    ours.write_text('{"edited": "by the user"}')  # changed since: no longer what cloudkd wrote
    os.utime(ours, ns=(1, 1))
    with pytest.raises(DataError, match="was not written by cloudkd"):
        O.check_file(ours, force=True)
    with pytest.raises(DataError, match="is the input"):
        with O.file_outputs({"--json": mine}, "score-json", force=True, inputs=[mine]):
            pass


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = O.lock_path(folder)
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(DataError, match=f"pid {sleeper.pid}"):
            with O.folder_lock(folder):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with O.folder_lock(folder) as held:  # its process is gone: stale, taken over
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_masks_folder_force_never_deletes_masks_cloudkd_did_not_write(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"the user's mask")
    for force in (False, True):
        with pytest.raises(DataError, match="not written by cloudkd"):
            O.claim_masks_folder(folder, "student X", force=force)
    assert sorted(p.name for p in folder.iterdir()) == ["a.tif"]
    O.claim_masks_folder(tmp_path / "m2", "student X")
    (tmp_path / "m2" / "c.tif").write_bytes(b"x")
    with pytest.raises(DataError, match="holds masks of student X"):
        O.claim_masks_folder(tmp_path / "m2", "student Y")
    O.claim_masks_folder(tmp_path / "m2", "student Y", force=True)  # cloudkd's masks of another model: replaced
    assert not (tmp_path / "m2" / "c.tif").exists()


def _with_corrupt_last_chip(small_data, root):
    """A copy of the test chips whose last chip has a corrupt band: a prediction fails after the first masks."""
    feats = root / "test_features"
    shutil.copytree(small_data / "test_features", feats)
    (sorted(feats.iterdir())[-1] / "B03.tif").write_bytes(b"not a TIFF")
    return feats


def test_a_failed_prediction_leaves_no_masks_and_keeps_the_masks_it_would_replace(student, small_data, tmp_path,
                                                                                   capsys):
    """A chip that fails to read stopped student / threshold predict half-way: their masks folder was left with
    the record and the masks written so far, and with --force another model's masks were already deleted."""
    from cloudkd.baselines.threshold import ThresholdModel

    feats = _with_corrupt_last_chip(small_data, tmp_path / "data")
    ThresholdModel(0.3, 0.7).save(tmp_path / "t.json")
    writers = {"student": ["student", "predict", "--model", student, "--batch", 2],
               "threshold": ["baseline", "threshold", "predict", "--model", tmp_path / "t.json"]}
    before = snapshot(tmp_path)
    for name, args in writers.items():
        code, text = invoke(args + ["--features", feats, "--out", tmp_path / "new"], capsys)
        _one_line_refusal(code, text, "B03.tif")
        assert snapshot(tmp_path) == before, name
    for name, args in writers.items():  # the other writer's masks are kept when a replacement fails
        other = next(o for o in writers if o != name)
        out = tmp_path / f"by_{other}"
        assert invoke(writers[other] + ["--features", small_data / "test_features", "--out", out], capsys)[0] == 0
        kept = snapshot(out)
        code, text = invoke(args + ["--features", feats, "--out", out, "--force"], capsys)
        _one_line_refusal(code, text, "B03.tif")
        assert snapshot(out) == kept, name
        assert not list(tmp_path.glob(".*cloudkd*")), name
        assert invoke(args + ["--features", small_data / "test_features", "--out", out, "--force"], capsys)[0] == 0
        assert json.loads((out / ".cloudkd-masks.json").read_text())["producer"].startswith(
            "student" if name == "student" else "thresholding")


def test_a_masks_folder_being_written_is_locked(small_data, tmp_path, capsys):
    from cloudkd.baselines.threshold import ThresholdModel

    ThresholdModel(0.3, 0.7).save(tmp_path / "t.json")
    out = tmp_path / "masks"
    args = ["baseline", "threshold", "predict", "--model", tmp_path / "t.json", "--features",
            small_data / "test_features", "--out", out]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # another cloudkd writing masks into the folder (its process is alive)
        O.lock_path(out).write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        _one_line_refusal(*invoke(args, capsys), f"pid {sleeper.pid}")
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    code, text = invoke(args, capsys)  # its process is gone: a stale lock, taken over
    assert code == 0, text
    assert not O.lock_path(out).exists()


def test_masks_of_a_model_retrained_in_place_are_another_producers(student, small_data, tmp_path, capsys):
    """Issue 29: the masks record named the run's path only, so the masks of a run trained again in place mixed
    with the old run's masks in one folder; the weights' fingerprint now tells the two apart."""
    from cloudkd.student.runs import load_student

    run = tmp_path / "run"
    shutil.copytree(student, run)
    out = tmp_path / "masks"
    args = ["student", "predict", "--model", run, "--features", small_data / "test_features", "--out", out]
    code, text = invoke(args, capsys)
    assert code == 0, text
    assert invoke(args, capsys)[0] == 0  # the same weights again: the same producer
    # the run trained again in place: other weights in student.pt, the same size and modification time
    pt = run / "student.pt"
    st = pt.stat()
    state = torch.load(pt, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.5
    torch.save(state, pt)
    os.utime(pt, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = snapshot(out)
    code, text = invoke(args, capsys)
    _one_line_refusal(code, text, "made with other weights")
    assert snapshot(out) == before
    assert invoke(args + ["--force"], capsys)[0] == 0
    note = json.loads((out / O.MASKS_RECORD).read_text())
    assert note["fingerprint"] == O.model_fingerprint(network=load_student(run))
    # the rule itself: a record without a fingerprint, or with another one, is another producer
    O.claim_masks_folder(tmp_path / "m3", "student X", fingerprint="a" * 64)
    O.claim_masks_folder(tmp_path / "m3", "student X", fingerprint="a" * 64)
    with pytest.raises(DataError, match="other weights"):
        O.claim_masks_folder(tmp_path / "m3", "student X", fingerprint="b" * 64)


def test_masks_of_thresholds_fitted_again_in_place_are_another_producers(small_data, tmp_path, capsys):
    from cloudkd.baselines.threshold import ThresholdModel

    model, out = tmp_path / "t.json", tmp_path / "masks"
    ThresholdModel(0.3, 0.7).save(model)
    args = ["baseline", "threshold", "predict", "--model", model, "--features", small_data / "test_features",
            "--out", out]
    assert invoke(args, capsys)[0] == 0
    ThresholdModel(0.4, 0.7).save(model)  # fitted again into the same file
    before = snapshot(out)
    code, text = invoke(args, capsys)
    _one_line_refusal(code, text, "made with other weights")
    assert snapshot(out) == before
    assert invoke(args + ["--force"], capsys)[0] == 0


# ---------------------------------------------------------------------------------------------------------------
# The data-loss cases of issue 29 (each failed before its fix)
# ---------------------------------------------------------------------------------------------------------------
def test_runtime_test_keep_force_never_empties_a_dataset_or_a_users_folder(small_data, tmp_path, capsys):
    (tmp_path / "s.zip").write_bytes(EMPTY_ZIP)
    generated = tmp_path / "generated"
    shutil.copytree(small_data, generated)  # a dataset cloudkd generated: still not a runtime folder
    real = _real_dataset(tmp_path / "real")
    user = _user_folder(tmp_path / "user")
    for keep in (generated, real, user):
        before = snapshot(tmp_path)
        code, text = invoke(["submission", "runtime-test", "--zip", tmp_path / "s.zip", "--data", small_data,
                             "--keep", keep, "--force"], capsys)
        _one_line_refusal(code, text, "--keep")
        assert snapshot(tmp_path) == before


def test_runtime_test_keep_force_replaces_its_own_runtime_folder(small_data, tmp_path, capsys):
    (tmp_path / "s.zip").write_bytes(EMPTY_ZIP)
    args = ["submission", "runtime-test", "--zip", tmp_path / "s.zip", "--data", small_data, "--keep",
            tmp_path / "rt", "--quiet"]
    code, text = invoke(args, capsys)
    assert code == 1 and "no main.py" in text, text  # an empty zip fails, but the folder is runtime-test's
    assert O.folder_mark(tmp_path / "rt")["kind"] == "runtime-root"
    code, text = invoke(args, capsys)
    _one_line_refusal(code, text, "--force")
    code, text = invoke(args + ["--force"], capsys)
    assert code == 1 and "no main.py" in text, text


def test_runtime_test_keep_relative_path_passes(student, small_data, tmp_path, monkeypatch, capsys):
    from cloudkd.submission.pack import pack

    pack(student, tmp_path / "s.zip", chip_size=96)
    monkeypatch.chdir(tmp_path)
    code, text = invoke(["submission", "runtime-test", "--zip", "s.zip", "--data", small_data, "--keep", "rt",
                         "--quiet"], capsys)
    assert code == 0 and "runtime-test passed" in text, text
    assert len(list((tmp_path / "rt" / "predictions").glob("*.tif"))) == 10


def test_runtime_test_json_does_not_replace_an_unrelated_file(small_data, tmp_path, capsys):
    (tmp_path / "s.zip").write_bytes(EMPTY_ZIP)
    (tmp_path / "v.json").write_text("the user's file\n")
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        code, text = invoke(["submission", "runtime-test", "--zip", tmp_path / "s.zip", "--data", small_data,
                             "--json", tmp_path / "v.json", "--quiet", *extra], capsys)
        _one_line_refusal(code, text, "v.json")
        assert snapshot(tmp_path) == before


def test_landsat_import_into_or_onto_its_source_is_refused(landsat_root, tmp_path, capsys):
    src = tmp_path / "l8"
    shutil.copytree(landsat_root, src)
    before = snapshot(tmp_path)
    code, text = invoke(["landsat", "import", src, "--out", src / "sub", "--force"], capsys)
    _one_line_refusal(code, text, "lies inside the input")
    code, text = invoke(["landsat", "import", src, "--out", src, "--force"], capsys)
    _one_line_refusal(code, text)
    code, text = invoke(["landsat", "import", src / "38-Cloud_training", "--out", tmp_path, "--force"], capsys)
    _one_line_refusal(code, text, "contains the input")
    assert snapshot(tmp_path) == before


def test_landsat_import_force_never_deletes_a_users_folder(landsat_root, tmp_path, capsys):
    user = _user_folder(tmp_path / "user")
    before = snapshot(tmp_path)
    code, text = invoke(["landsat", "import", landsat_root, "--out", user, "--force"], capsys)
    _one_line_refusal(code, text, "was not written by cloudkd; remove it yourself")
    assert snapshot(tmp_path) == before
    code, text = invoke(["landsat", "import", landsat_root, "--out", tmp_path / "imp"], capsys)
    assert code == 0, text
    code, text = invoke(["landsat", "import", landsat_root, "--out", tmp_path / "imp", "--force"], capsys)
    assert code == 0, text  # its own import is refreshed


def test_demo_force_never_replaces_a_real_dataset(tmp_path, monkeypatch, capsys):
    import cloudkd.demo as demo

    def stop(*a, **k):  # a guard: the data stage passed, so the long stages must not run here
        raise DataError("STOPPED after the data stage")

    monkeypatch.setattr(demo, "load_index", stop)
    real = _real_dataset(tmp_path / "real")
    before = snapshot(tmp_path)
    code, text = invoke(["demo", "--quick", "--data", real, "--workdir", tmp_path / "work", "--force"], capsys)
    _one_line_refusal(code, text, "was not written by cloudkd")
    assert snapshot(tmp_path) == before


def test_demo_workdir_is_new_or_the_demos_own(tmp_path, monkeypatch, capsys):
    """`demo --workdir DIR` wrote folds.csv, threshold.json, predictions/ ... into any folder and deleted its
    student/ (a stale run) when it rebuilt: a user's folder is refused even with --force, before the data is
    generated; the demo's own workdir (marked, or with a results.json of a demo from before the mark) is reused;
    a workdir that is or holds the data folder is refused."""
    import cloudkd.demo as demo

    monkeypatch.setattr(demo, "load_index", lambda *a, **k: (_ for _ in ()).throw(DataError("STOPPED")))
    mine = _user_folder(tmp_path / "mine")
    (mine / "student").mkdir()
    (mine / "student" / "thesis.tex").write_text("the user's work\n")
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        code, text = invoke(["demo", "--quick", "--data", tmp_path / "d", "--workdir", mine, *extra], capsys)
        _one_line_refusal(code, text, "was not written by cloudkd")
        assert snapshot(tmp_path) == before
    for work, data in ((tmp_path / "w", tmp_path / "w"), (tmp_path / "w", tmp_path / "w" / "d")):
        code, text = invoke(["demo", "--quick", "--data", data, "--workdir", work], capsys)
        _one_line_refusal(code, text, "the input")
        assert snapshot(tmp_path) == before
    legacy = tmp_path / "legacy"  # a demo's workdir from before the mark
    legacy.mkdir()
    (legacy / "results.json").write_text(json.dumps({"config": {"workdir": str(legacy)}, "rows": []}))
    for work in (tmp_path / "new", legacy, tmp_path / "new"):  # the second time: its own, marked
        code, text = invoke(["demo", "--quick", "--data", tmp_path / "d", "--workdir", work], capsys)
        assert code == 2 and "STOPPED" in text, text  # past the workdir and data checks
        assert O.folder_mark(work)["kind"] == "demo"


def test_demo_force_still_regenerates_its_own_data(tmp_path, monkeypatch, capsys):
    import cloudkd.demo as demo
    from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

    def stop(*a, **k):
        raise DataError("STOPPED after the data stage")

    monkeypatch.setattr(demo, "load_index", stop)
    data = tmp_path / "d"
    synthesize(data, SynthConfig(n_train=2, n_test=1, size=32, seed=5), workers=1, progress=False)
    code, text = invoke(["demo", "--quick", "--data", data, "--workdir", tmp_path / "work", "--force"], capsys)
    assert code == 2 and "STOPPED after the data stage" in text, text
    assert json.loads((data / "synth.json").read_text())["config"]["seed"] != 5  # the demo's own config now


def test_predict_scene_never_writes_onto_its_input(onnx_model, tmp_path, capsys):
    scene = _scene_file(tmp_path / "X.tif")
    bands = _band_folder(tmp_path / "bands")
    before = snapshot(tmp_path)
    for args in ([scene, "--out", scene], [bands, "--out", bands / "B02.tif"], [bands, "--out", bands / "m.tif"],
                 [scene, "--out", tmp_path / "m.tif", "--prob-out", scene]):
        code, text = invoke(["onboard", "predict-scene", *args, "--model", onnx_model, "--force"], capsys)
        _one_line_refusal(code, text, "the input")
        assert snapshot(tmp_path) == before


def test_predict_scene_force_replaces_only_its_own_mask(onnx_model, tmp_path, capsys):
    scene = _scene_file(tmp_path / "X.tif")
    (tmp_path / "user.tif").write_bytes(b"the user's")
    code, text = invoke(["onboard", "predict-scene", scene, "--model", onnx_model, "--out", tmp_path / "user.tif",
                         "--force"], capsys)
    _one_line_refusal(code, text, "was not written by cloudkd")
    assert (tmp_path / "user.tif").read_bytes() == b"the user's"
    args = ["onboard", "predict-scene", scene, "--model", onnx_model, "--out", tmp_path / "m.tif"]
    assert invoke(args, capsys)[0] == 0
    _one_line_refusal(*invoke(args, capsys), "--force")
    code, text = invoke(args + ["--force"], capsys)
    assert code == 0, text


def test_pack_never_replaces_a_runs_file_or_a_users_file(student, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(student, run)
    (tmp_path / "other.py").write_text("print('the user's code')\n")
    before = snapshot(tmp_path)
    code, text = invoke(["submission", "pack", "--checkpoint", run, "--out", run / "student.pt", "--force"], capsys)
    _one_line_refusal(code, text, "lies inside the input")
    code, text = invoke(["submission", "pack", "--checkpoint", run, "--out", tmp_path / "other.py", "--force"],
                        capsys)
    _one_line_refusal(code, text, "was not written by cloudkd")
    assert snapshot(tmp_path) == before
    args = ["submission", "pack", "--checkpoint", run, "--out", tmp_path / "s.zip", "--chip-size", 96]
    assert invoke(args, capsys)[0] == 0
    assert invoke(args + ["--force"], capsys)[0] == 0  # its own zip


def test_score_folds_audit_and_preview_refuse_to_replace_an_unrelated_file(small_data, student, tmp_path, capsys):
    labels = small_data / "test_labels"
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file\n")
    before = snapshot(tmp_path)
    cases = [["evaluate", "score", "--pred", labels, "--labels", labels, "--json", mine,
              "--report-dir", tmp_path / "rep"],
             ["data", "folds", small_data, "--out", mine, "--k", 2],
             ["evaluate", "audit", small_data, "--model", student, "--out", tmp_path / "audit", "--exclude-out", mine],
             ["data", "preview", small_data, "--out", mine, "--n", 1]]
    for args in cases:
        code, text = invoke(args, capsys)
        _one_line_refusal(code, text, "exists; --force replaces it")
        assert snapshot(tmp_path) == before, args


def test_folds_out_force_replaces_its_own_csv(small_data, tmp_path, capsys):
    args = ["data", "folds", small_data, "--out", tmp_path / "f.csv", "--k", 2]
    assert invoke(args, capsys)[0] == 0
    _one_line_refusal(*invoke(args, capsys), "--force")
    assert invoke(args + ["--force"], capsys)[0] == 0


def test_the_marks_name_the_command_that_wrote(small_data, tmp_path, capsys):
    """Issue 29: typer 0.2x runs on its own copy of click, so every mark said "cloudkd (library)"."""
    assert invoke(["data", "folds", small_data, "--out", tmp_path / "f.csv", "--k", 2], capsys)[0] == 0
    entry = json.loads((tmp_path / O.MANIFEST).read_text())["files"]["f.csv"]
    assert entry["command"] == "cloudkd data folds"


def test_export_does_not_replace_another_models_export_without_force(student, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_fp32.onnx").write_bytes(b"another model")
    (other / "export.json").write_text(json.dumps({"out": str(other), "artefacts": {}}))
    before = snapshot(tmp_path)
    code, text = invoke(["onboard", "export", "--checkpoint", student, "--out", other, "--no-int8", "--no-memory",
                         "--size", 96], capsys)
    _one_line_refusal(code, text, "--force to replace it")
    assert snapshot(tmp_path) == before
    code, text = invoke(["onboard", "export", "--checkpoint", student, "--out", other, "--no-int8", "--no-memory",
                         "--size", 96, "--force"], capsys)
    assert code == 0, text
    assert (other / "model_fp32.onnx").read_bytes() != b"another model"


def test_a_failed_export_leaves_nothing_and_an_old_export_as_it_was(student, small_data, tmp_path, capsys):
    """A corrupt calibration chip failed `onboard export` after its fp32 models were written: a new --out was left
    with cloudkd's marker and model_fp32*.onnx, and with --force the old export was already gone."""
    cal = tmp_path / "cal"
    shutil.copytree(small_data / "train_features", cal / "train_features")
    for band in (cal / "train_features").glob("*/B02.tif"):
        band.write_bytes(b"not a TIFF")
    args = ["onboard", "export", "--checkpoint", student, "--no-memory", "--no-int8", "--size", 96, "--n-calib", 3]
    code, text = invoke(args + ["--out", tmp_path / "new", "--calib", cal], capsys)
    _one_line_refusal(code, text, "B02.tif")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".*cloudkd*"))
    assert invoke(args + ["--out", tmp_path / "old", "--calib", small_data / "train_features"], capsys)[0] == 0
    report = json.loads((tmp_path / "old" / "export.json").read_text())
    assert report["out"] == str(tmp_path / "old")  # the paths it has, not where it was built
    assert all(a["path"].startswith(str(tmp_path / "old")) for k, a in report["artefacts"].items() if k != "pytorch")
    before = snapshot(tmp_path)
    code, text = invoke(args + ["--out", tmp_path / "old", "--calib", cal, "--force"], capsys)
    _one_line_refusal(code, text, "B02.tif")
    assert snapshot(tmp_path) == before


def test_bench_neither_replaces_nor_benchmarks_another_models_export(world, tmp_path, capsys):
    """`onboard bench --student RUN --export-dir DIR` exported RUN over DIR with force when DIR had no int8 model
    (another model's export, silently replaced), and took DIR's int8 model as RUN's when it had one."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_fp32.onnx").write_bytes(b"another model")
    (other / "export.json").write_text(json.dumps({"out": str(other), "artefacts": {
        "pytorch": {"path": str(tmp_path / "another_run" / "student.pt")}}}))
    before = snapshot(tmp_path)
    for int8 in (False, True):
        if int8:
            (other / "model_int8.onnx").write_bytes(b"another int8 model")
            before = snapshot(tmp_path)
        code, text = invoke(["onboard", "bench", "--data", world["data"], "--demo", tmp_path / "demo", "--student",
                             world["run"], "--export-dir", other, "--out", tmp_path / "b", "--no-peer"], capsys)
        _one_line_refusal(code, text, "holds the export of")
        assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------------
# The sweep: every writing command, with --force, against what cloudkd did not write and against its own inputs
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(small_data, student, landsat_root, onnx_model, tmp_path_factory):
    w = tmp_path_factory.mktemp("policy")
    data = w / "data"
    shutil.copytree(small_data, data)
    (data / "synth.json").unlink()  # as a real dataset: nothing says cloudkd wrote it
    run = w / "run"
    shutil.copytree(student, run)
    l8 = w / "l8"
    shutil.copytree(landsat_root, l8)
    (w / "s.zip").write_bytes(EMPTY_ZIP)
    _user_folder(w / "user")
    (w / "user.txt").write_text("the user's file\n")
    _scene_file(w / "X.tif")
    from cloudkd.baselines.threshold import ThresholdModel

    ThresholdModel(0.3, 0.7).save(w / "t.json")
    from cloudkd.data.landsat.reader import ensure_imported

    l8imp = ensure_imported(l8, progress=False)  # the import `landsat score` reads (made once, here)
    return {"w": w, "data": data, "run": run, "l8": l8, "onnx": onnx_model, "labels": data / "test_labels",
            "test": data / "test_features", "l8imp": l8imp, "l8pred": l8imp / "test_labels"}


WRITERS = {  # command -> (args with {out} for the output under test, which argument is the output)
    "runtime-test-keep": ["submission", "runtime-test", "--zip", "{w}/s.zip", "--data", "{data}", "--keep", "{out}"],
    "runtime-test-json": ["submission", "runtime-test", "--zip", "{w}/s.zip", "--data", "{data}", "--json",
                          "{out}"],
    "landsat-import": ["landsat", "import", "{l8}", "--out", "{out}"],
    "demo-data": ["demo", "--quick", "--data", "{out}", "--workdir", "{w}/demo-work"],
    "demo-workdir": ["demo", "--quick", "--data", "{w}/demo-data", "--workdir", "{out}"],
    "predict-scene": ["onboard", "predict-scene", "{w}/X.tif", "--model", "{onnx}", "--out", "{out}"],
    "pack": ["submission", "pack", "--checkpoint", "{run}", "--out", "{out}"],
    "score-json": ["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--json", "{out}",
                   "--report-dir", "{w}/rep"],
    "folds": ["data", "folds", "{data}", "--out", "{out}", "--k", "2"],
    "audit-exclude-out": ["evaluate", "audit", "{data}", "--model", "{run}", "--out", "{w}/audit", "--exclude-out",
                          "{out}"],
    "preview": ["data", "preview", "{data}", "--out", "{out}", "--n", "1"],
    "export": ["onboard", "export", "--checkpoint", "{run}", "--out", "{out}", "--no-int8", "--no-memory"],
    "data-synth": ["data", "synth", "{out}", "--n-train", "2", "--n-test", "1", "--size", "32", "--overwrite"],
    "landsat-synth": ["landsat", "synth", "{out}", "--train-scenes", "1", "--test-scenes", "0", "--overwrite"],
    "student-train": ["student", "train", "{data}", "--out", "{out}", "--model", "unet-xs", "--epochs", "1",
                      "--steps", "1", "--batch", "2", "--crop", "32", "--accelerator", "cpu"],
    "student-distill": ["student", "distill", "{data}", "--out", "{out}", "--soft", "{w}/soft", "--model", "unet-xs",
                        "--epochs", "1", "--steps", "1", "--batch", "2", "--crop", "32", "--accelerator", "cpu"],
    "student-predict": ["student", "predict", "--model", "{run}", "--features", "{test}", "--out", "{out}"],
    "teacher-predict-masks": ["teacher", "predict", "--features", "{test}", "--workdir", "{w}/nn", "--masks-out",
                              "{out}"],
    "teacher-predict-soft": ["teacher", "predict", "--features", "{test}", "--workdir", "{w}/nn", "--soft-out",
                             "{out}"],
    "score-report-dir": ["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--report-dir", "{out}"],
    "real-bench": ["evaluate", "real-bench", "{data}", "--out", "{out}", "--student", "{run}", "--peer", "no"],
    "downlink": ["onboard", "downlink", "--pred", "{labels}", "--labels", "{labels}", "--out", "{out}"],
    "bench": ["onboard", "bench", "--data", "{data}", "--demo", "{w}/demo", "--student", "{run}", "--out", "{out}",
              "--no-peer"],
    "threshold-fit": ["baseline", "threshold", "fit", "{data}", "--out", "{out}"],
    "threshold-predict": ["baseline", "threshold", "predict", "--model", "{w}/t.json", "--features", "{test}",
                          "--out", "{out}"],
    "audit-out": ["evaluate", "audit", "{data}", "--model", "{run}", "--out", "{out}"],
    "landsat-score-report-dir": ["landsat", "score", "--pred", "{l8pred}", "--data", "{l8}", "--report-dir", "{out}"],
    "landsat-score-json": ["landsat", "score", "--pred", "{l8pred}", "--data", "{l8}", "--report-dir", "{out}.rep",
                           "--json", "{out}"],
    "landsat-score-masks": ["landsat", "score", "--pred", "{l8pred}", "--data", "{l8}", "--report-dir", "{out}.rep",
                            "--masks", "{out}"],
}
FOLDER_OUTPUTS = {"runtime-test-keep", "landsat-import", "demo-data", "demo-workdir", "export", "data-synth", "landsat-synth",
                  "student-train", "student-distill", "student-predict", "teacher-predict-masks",
                  "teacher-predict-soft", "score-report-dir", "real-bench", "downlink", "bench", "threshold-predict",
                  "audit-out", "landsat-score-report-dir", "landsat-score-masks"}
OWN_INPUTS = {  # the output placed on (or in, or around) one of the command's inputs
    "runtime-test-keep": ["{data}", "{w}"],
    "runtime-test-json": ["{data}/v.json", "{w}/s.zip"],
    "landsat-import": ["{l8}", "{l8}/sub", "{w}"],
    "predict-scene": ["{w}/X.tif"],
    "pack": ["{run}/student.pt", "{run}/new.zip", "{w}/s.zip"],
    "score-json": ["{labels}/x.json", "{labels}"],
    "folds": ["{data}/folds.csv", "{data}/train_metadata.csv"],
    "audit-exclude-out": ["{data}/exclude.txt", "{run}/exclude.txt"],
    "preview": ["{data}/p.png"],
    "export": ["{run}", "{run}/export", "{w}"],
    "student-train": ["{data}", "{data}/run", "{w}"],
    "student-distill": ["{w}/soft", "{w}/soft/run", "{data}", "{w}"],
    "student-predict": ["{test}", "{test}/masks", "{run}", "{run}/masks", "{w}"],
    "teacher-predict-masks": ["{test}", "{w}/nn", "{w}/nn/masks", "{w}"],
    "teacher-predict-soft": ["{test}", "{w}/nn/soft", "{w}"],
    "score-report-dir": ["{labels}", "{labels}/rep", "{w}"],
    "real-bench": ["{data}", "{data}/rb", "{run}", "{run}/rb", "{w}"],
    "downlink": ["{labels}", "{labels}/d", "{w}"],
    "bench": ["{data}", "{data}/b", "{run}/b", "{w}"],
    "threshold-fit": ["{data}/t.json", "{data}/train_metadata.csv", "{w}"],
    "threshold-predict": ["{test}", "{test}/masks", "{w}/t.json", "{w}"],
    "audit-out": ["{data}", "{data}/a", "{run}", "{run}/a", "{w}"],
    "landsat-score-report-dir": ["{l8pred}", "{l8pred}/rep", "{l8}", "{l8}/rep", "{l8imp}", "{l8imp}/rep", "{w}"],
    "landsat-score-json": ["{l8pred}/s.json", "{l8}/s.json", "{l8imp}/s.json"],
    "landsat-score-masks": ["{l8pred}", "{l8pred}/m", "{l8}/m", "{l8imp}/m", "{w}"],
}
SWEEP = ([(cmd, "{w}/user" if cmd in FOLDER_OUTPUTS else "{w}/user.txt") for cmd in WRITERS]
         + [(cmd, out) for cmd, outs in OWN_INPUTS.items() for out in outs])


def _sweep(world, monkeypatch, capsys, cmd, out, force):
    import cloudkd.demo as demo

    monkeypatch.setattr(demo, "load_index", lambda *a, **k: (_ for _ in ()).throw(DataError("STOPPED")))
    fill = {k: str(v) for k, v in world.items()}
    fill["out"] = out.format(**fill)
    args = [a.format(**fill) for a in WRITERS[cmd] if force or a != "--overwrite"]
    args += ["--force"] if force and "--overwrite" not in WRITERS[cmd] else []
    before = snapshot(world["w"])
    code, text = invoke(args, capsys)
    _one_line_refusal(code, text)
    assert "STOPPED" not in text and "No such option" not in text, text
    assert snapshot(world["w"]) == before, f"{cmd} {'--force ' if force else ''}changed files on disk"


@pytest.mark.parametrize("cmd, out", SWEEP, ids=[f"{c}:{o.split('}')[-1] or o}" for c, o in SWEEP])
def test_every_writing_command_with_force_changes_nothing_it_does_not_own(world, monkeypatch, capsys, cmd, out):
    _sweep(world, monkeypatch, capsys, cmd, out, force=True)


@pytest.mark.parametrize("cmd, out", SWEEP, ids=[f"{c}:{o.split('}')[-1] or o}" for c, o in SWEEP])
def test_every_writing_command_without_force_changes_nothing_that_exists(world, monkeypatch, capsys, cmd, out):
    """Without --force too: an existing file or folder (the user's) and the command's own inputs are refused."""
    _sweep(world, monkeypatch, capsys, cmd, out, force=False)


OWN_AGAIN = {  # writers that took up the policy in issue 29: their own output is replaced with --force only
    "score-report-dir": ("folder", WRITERS["score-report-dir"]),
    "real-bench": ("folder", WRITERS["real-bench"]),
    "downlink": ("folder", WRITERS["downlink"]),
    "threshold-fit": ("file", WRITERS["threshold-fit"]),
    "audit-out": ("folder", WRITERS["audit-out"]),
    "landsat-score-report-dir": ("folder", WRITERS["landsat-score-report-dir"]),
    "landsat-score-json": ("file", WRITERS["landsat-score-json"]),
    "landsat-score-masks": ("folder", WRITERS["landsat-score-masks"]),
}


@pytest.mark.parametrize("cmd", sorted(OWN_AGAIN))
def test_a_writers_own_output_is_replaced_with_force_only(world, tmp_path, capsys, cmd):
    kind, args = OWN_AGAIN[cmd]
    fill = {k: str(v) for k, v in world.items()}
    fill["out"] = str(tmp_path / ("out" if kind == "folder" else "out.json"))
    args = [a.format(**fill) for a in args]
    code, text = invoke(args, capsys)
    assert code == 0, text
    out = tmp_path / ("out" if kind == "folder" else "out.json")
    assert (O.folder_mark(out) if kind == "folder" else O.file_mark(out)) is not None  # cloudkd's mark
    before = snapshot(tmp_path)
    code, text = invoke(args, capsys)
    _one_line_refusal(code, text, "--force")
    assert snapshot(tmp_path) == before
    code, text = invoke(args + ["--force"], capsys)
    assert code == 0, text
    assert not list(tmp_path.glob(".*cloudkd-new")) and not list(tmp_path.glob(".*cloudkd-lock"))


def test_landsat_score_outputs_are_apart_and_nothing_is_left_when_it_fails(world, tmp_path, monkeypatch, capsys):
    """landsat score's three outputs never overlap one another, and a scoring that fails half-way leaves no
    report, JSON, masks, build or lock behind."""
    import cloudkd.data.landsat.scenes as scenes

    base = ["landsat", "score", "--pred", world["l8pred"], "--data", world["l8"]]
    for extra in (["--report-dir", tmp_path / "r", "--masks", tmp_path / "r"],
                  ["--report-dir", tmp_path / "r", "--masks", tmp_path / "r" / "m"],
                  ["--report-dir", tmp_path / "r", "--json", tmp_path / "r" / "s.json"],
                  ["--report-dir", tmp_path / "r", "--masks", tmp_path / "m", "--json", tmp_path / "m" / "s.json"]):
        code, text = invoke(base + extra, capsys)
        _one_line_refusal(code, text, "this output")
        assert not list(tmp_path.iterdir()), extra

    def broken(*a, **k):
        raise DataError("STOPPED while scoring")

    monkeypatch.setattr(scenes, "confusion", broken)  # after the first scene's mask is written
    code, text = invoke(base + ["--report-dir", tmp_path / "r", "--masks", tmp_path / "m", "--json",
                                tmp_path / "s.json"], capsys)
    _one_line_refusal(code, text, "STOPPED")
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_audit_out_never_replaces_a_users_file_and_a_failed_audit_leaves_nothing(world, tmp_path, monkeypatch,
                                                                                 capsys):
    """`evaluate audit --out` wrote audit.csv / audit.png into any folder, replacing the user's audit.png without
    --force (and their audit.csv with it); a failing contact sheet left audit.csv behind."""
    import cloudkd.evaluate.audit as A

    mine = _user_folder(tmp_path / "mine")
    (mine / "audit.png").write_bytes(b"the user's picture")
    base = ["evaluate", "audit", world["data"], "--model", world["run"]]
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        code, text = invoke(base + ["--out", mine, *extra], capsys)
        _one_line_refusal(code, text, "was not written by cloudkd")
        assert snapshot(tmp_path) == before
    code, text = invoke(base + ["--out", tmp_path / "a", "--exclude-out", tmp_path / "a"], capsys)
    _one_line_refusal(code, text, "--exclude-out")

    def broken(*a, **k):
        raise DataError("STOPPED while drawing")

    monkeypatch.setattr(A, "contact_sheet", broken)
    code, text = invoke(base + ["--out", tmp_path / "a"], capsys)
    _one_line_refusal(code, text, "STOPPED")
    assert snapshot(tmp_path) == before
