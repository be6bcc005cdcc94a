"""Reliability of the data path: main.py's band reader, the runtime emulator's verdict, scoring with a missing
label, interrupted generations, and the teacher's error messages."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cloudkd.common.errors import DataError
from cloudkd.data import generation
from cloudkd.data.chips import validate_split
from cloudkd.data.roots import resolve_split
from cloudkd.data.synth import sentinel2
from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize
from cloudkd.submission.emulate import runtime_test
from cloudkd.submission.pack import pack

from conftest import make_dataset

SIZE = 96
#: what a generator leaves in a dataset root until it has written its completion stamp
UNFINISHED = "generation.unfinished"


@pytest.fixture(scope="module")
def zip96(student, tmp_path_factory):
    z = tmp_path_factory.mktemp("zip96") / "submission.zip"
    pack(student, z, batch_size=4, chip_size=SIZE)
    return z


def _copy_test_chips(small_data, dest: Path, n: int) -> list:
    """The first ``n`` test chips of the small dataset (features, labels, metadata) under ``dest``."""
    test = resolve_split(small_data, "test")
    ids = test.chip_ids()[:n]
    for cid in ids:
        shutil.copytree(test.chip_dir(cid), dest / "test_features" / cid)
        (dest / "test_labels").mkdir(parents=True, exist_ok=True)
        shutil.copy(test.label_path(cid), dest / "test_labels" / f"{cid}.tif")
    return ids


# ------------------------------------------------------------------------------ 1. main.py reads headers first
def _import_main_py(root: Path, monkeypatch):
    """The main.py unpacked under ``root`` by runtime_test, imported as a module (its assets on sys.path)."""
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))  # main.py puts its assets first; undone after the test
    monkeypatch.setenv("CLOUDKD_ROOT", str(root))
    for name in [m for m in sys.modules if m == "cloudkd_rt" or m.startswith("cloudkd_rt.")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("cloudkd_submission_main", root / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_py_refuses_a_huge_band_from_its_header_without_decoding_it(zip96, small_data, tmp_path, monkeypatch):
    import tracemalloc

    ids = _copy_test_chips(small_data, tmp_path / "data", 2)
    feats = tmp_path / "data" / "test_features"
    shutil.copytree(feats / ids[0], feats / "huge")
    band = feats / "huge" / "B02.tif"
    tifffile.imwrite(band, np.zeros((8000, 8000), np.uint16), compression="zlib")  # 128 MB once decoded
    assert band.stat().st_size < 2_000_000
    v = runtime_test(zip96, feats, keep=tmp_path / "root", echo=False)
    assert v["ok"], v["reasons"]
    mask = np.array(Image.open(tmp_path / "root" / "predictions" / "huge.tif"))
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask).tolist()) <= {0, 1}
    assert "huge: B02.tif: wrong shape (8000, 8000) (expected (96, 96))" in v["log"]
    assert "(1 with a fallback, 0 failed)" in v["log"]
    # main.py's own band reader, memory traced: the band is refused from its header. (The whole main.py process
    # peaks at ~700 MB with torch, so its peak RSS would hide a 128 MB decode; numpy's buffers are traced here.)
    main = _import_main_py(tmp_path / "root", monkeypatch)
    tracemalloc.start()
    try:
        refl, problem = main.read_band(band, SIZE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refl is None and problem.startswith("wrong shape (8000, 8000) (expected (96, 96))")
    assert peak < 8 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB allocated to refuse the band"
    good, problem = main.read_band(feats / ids[0] / "B02.tif", SIZE)  # a right band still reads
    assert problem is None and good.shape == (SIZE, SIZE) and good.dtype == np.float32


# ------------------------------------------------------------------------- 2. the emulator's verdict is honest
def test_runtime_verdict_fails_when_readable_chips_get_fallback_masks(student, small_data, tmp_path):
    ids = _copy_test_chips(small_data, tmp_path / "data", 2)
    z = tmp_path / "seven.zip"
    pack(student, z, batch_size=4, chip_size=7)  # a zip for another chip size: every chip gets a 7x7 fallback
    v = runtime_test(z, tmp_path / "data", keep=tmp_path / "root", echo=False)
    assert "(2 with a fallback, 0 failed)" in v["log"]
    assert sorted(v["summary"]["fallback"]) == ids and v["summary"]["chips_written"] == 2
    assert not v["ok"] and v["fallback"] == ids
    assert any("fallback mask to 2 chip(s) whose bands read fine" in r for r in v["reasons"]), v["reasons"]
    v = runtime_test(z, tmp_path / "data", labels=tmp_path / "data", echo=False)
    assert not v["ok"] and v["jaccard"] is None
    assert any("no score came out" in r for r in v["reasons"]), v["reasons"]


def test_runtime_verdict_fails_when_labels_are_given_and_no_score_comes_out(zip96, small_data, tmp_path):
    ids = _copy_test_chips(small_data, tmp_path / "data", 2)
    for cid in ids:  # labels of another size: the scorer refuses them, blaming the label, not the prediction
        tifffile.imwrite(tmp_path / "data" / "test_labels" / f"{cid}.tif", np.ones((48, 48), np.uint8))
    v = runtime_test(zip96, tmp_path / "data", labels=tmp_path / "data", echo=False)
    assert v["fallback"] == [] and v["returncode"] == 0
    assert not v["ok"] and v["jaccard"] is None
    assert any("no score came out" in r and "test_labels" in r and "does not fit its chip" in r
               for r in v["reasons"]), v["reasons"]


def test_read_summary_takes_the_one_summary_line_and_refuses_a_malformed_one():
    """The verdict reads main.py's JSON summary line, whatever its other lines say; a malformed one is named."""
    from cloudkd.submission.emulate import read_summary

    good = {"chips_expected": 3, "chips_written": 3, "fallback": {"bbbb": "no readable band; all-clear mask"},
            "failed": {}, "threshold": 0.5, "seconds": 1.25, "tta": False}
    prose = [
        "2024-01-01 10:00:00,000 INFO 3 chips in /x; model unet-s on cpu; threshold 0.5, tta True, batch 4",
        "2024-01-01 10:00:00,100 WARNING aaaa: B02.tif: wrong shape (8, 8) (expected (96, 96))",  # words alone
        "2024-01-01 10:00:00,200 WARNING zzzz: all-clear mask",  # no longer decide anything
        "2024-01-01 10:00:01,000 INFO done: 3 masks for 3 chips (2 with a fallback, 0 failed) in 1.0 s (3 ms/chip)",
    ]

    def log(summary_text, stamp=True):
        return "\n".join(prose + [("2024-01-01 10:00:01,001 INFO " if stamp else "") + "cloudkd-summary " +
                                  summary_text])

    assert read_summary(log(json.dumps(good))) == (good, None)
    assert read_summary(log(json.dumps(good), stamp=False)) == (good, None)  # a bare line (a hand-written main.py)
    for bad, says in (
            ({**good, "chips_written": True}, "'chips_written' is True, not an integer"),
            ({**good, "threshold": "0.5"}, "'threshold' is '0.5', not a number"),
            ({k: v for k, v in good.items() if k != "seconds"}, "'seconds' is missing, not a number"),
            ({**good, "fallback": {"bbbb": 3}}, "'fallback' is not a {chip_id: reason} object"),
            ({**good, "failed": ["bbbb"]}, "'failed' is ['bbbb'], not an object"),
            ([good], "a JSON list, not an object")):
        summary, problem = read_summary(log(json.dumps(bad)))
        assert summary is None and problem == f"main.py's run summary is malformed: {says}", problem
    summary, problem = read_summary("\n".join(prose))
    assert summary is None and problem.startswith("main.py's log has no run summary")


# ------------------------------------------------------------------- 3. a chip in the metadata without a label
@pytest.fixture
def unlabelled(tmp_path):
    rng = np.random.default_rng(0)
    chips = {c: rng.integers(1, 3000, (4, 32, 32)).astype(np.uint16) for c in ("aaaa", "bbbb", "cccc")}
    labels = {c: (rng.random((32, 32)) > 0.5).astype(np.uint8) for c in chips}
    root = make_dataset(tmp_path / "ds", chips, split="test", labels=labels)
    (tmp_path / "pred").mkdir()
    for c in chips:
        tifffile.imwrite(tmp_path / "pred" / f"{c}.tif", labels[c])
    (root / "test_labels" / "bbbb.tif").unlink()
    return root, tmp_path / "pred"


def test_score_refuses_a_chip_listed_in_the_metadata_without_a_label(unlabelled, tmp_path):
    from cloudkd.evaluate.scoring import score_folder

    root, pred = unlabelled
    with pytest.raises(DataError, match=r"test_labels: no label file for 1 chip\(s\) listed in .*: bbbb"):
        score_folder(pred, root / "test_labels")  # metadata guessed beside the labels
    shutil.copytree(root / "test_labels", tmp_path / "labels")
    with pytest.raises(DataError, match="bbbb"):
        score_folder(pred, tmp_path / "labels", metadata=root / "test_metadata.csv")
    rep = score_folder(pred, tmp_path / "labels")  # no metadata: the label files are the chips
    assert rep.n_chips == 2 and rep.extra == ["bbbb"]


def test_score_cli_names_the_unlabelled_chip_with_exit_code_2(unlabelled, monkeypatch, capsys):
    """Through the real entry point (cloudkd.cli.main, the console script): one line, exit code 2."""
    from cloudkd import cli

    root, pred = unlabelled
    monkeypatch.setattr(sys, "argv", ["cloudkd", "evaluate", "score", "--pred", str(pred), "--labels",
                                      str(root / "test_labels")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    assert exc.value.code == 2
    assert "bbbb" in out.err and "test_labels" in out.err and "Traceback" not in out.out + out.err


# ---------------------------------------------------------------------------- 4. interrupted generations
TINY = SynthConfig(n_train=4, n_test=2, size=32, seed=3, label_style="opacity")


def _kill_at(monkeypatch, module, name: str):
    """Make ``module.atomic_write`` die (like a kill) when it is about to write ``name``."""
    real = sentinel2.atomic_write

    def dying(path, *a, **k):
        if Path(path).name == name:
            raise KeyboardInterrupt(f"killed before {name}")
        return real(path, *a, **k)

    monkeypatch.setattr(module, "atomic_write", dying, raising=False)


def test_a_killed_synth_is_reported_incomplete_and_generated_again(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _kill_at(monkeypatch, generation, "synth.json")  # killed after both metadata CSVs, before the stamp
    with pytest.raises(KeyboardInterrupt):
        synthesize(root, TINY, workers=1, progress=False)
    monkeypatch.undo()
    assert (root / "train_metadata.csv").is_file() and not (root / "synth.json").exists()
    rep = validate_split(resolve_split(root, "train"))
    assert not rep.ok and any("generation did not finish" in e for e in rep.errors), rep.errors
    again = synthesize(root, TINY, workers=1, progress=False)  # not reused: generated again
    assert not again.reused and (root / "synth.json").is_file() and not (root / UNFINISHED).exists()
    assert validate_split(resolve_split(root, "train")).ok


def test_a_dataset_being_generated_is_locked_against_a_second_generator(tmp_path):
    """Issue 29 (locks): a second generator into a folder another live one is writing is refused (the marker's pid
    is alive on this host), even with overwrite; the first one's files stay."""
    import socket
    import subprocess

    root = tmp_path / "ds"
    root.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / UNFINISHED).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        (root / "train_metadata.csv").write_text("being written\n")
        for overwrite in (False, True):
            with pytest.raises(DataError, match=f"another generation \\(pid {sleeper.pid}\\) is still writing"):
                synthesize(root, TINY, workers=1, overwrite=overwrite, progress=False)
            assert (root / "train_metadata.csv").read_text() == "being written\n"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not synthesize(root, TINY, workers=1, progress=False).reused  # its process is gone: generated again
    assert validate_split(resolve_split(root, "train")).ok


def test_the_unfinished_marker_wins_over_the_stamp_and_real_datasets_still_validate(tmp_path):
    root = tmp_path / "ds"
    synthesize(root, TINY, workers=1, progress=False)
    assert validate_split(resolve_split(root, "train")).ok and not (root / UNFINISHED).exists()
    (root / UNFINISHED).write_text("{}")  # as if killed between the stamp and the marker's removal
    rep = validate_split(resolve_split(root, "test"))
    assert not rep.ok and "generation did not finish" in rep.errors[0]
    assert synthesize(root, TINY, workers=1, progress=False).reused is False
    assert not (root / UNFINISHED).exists() and validate_split(resolve_split(root, "test")).ok
    real = make_dataset(tmp_path / "real", {"abcd": np.ones((4, 32, 32), np.uint16)},
                        labels={"abcd": np.zeros((32, 32), np.uint8)})  # no marker, no stamp
    assert validate_split(resolve_split(real, "train")).ok
    from cloudkd.data import chips

    assert chips.UNFINISHED == UNFINISHED


def test_a_killed_landsat_synth_is_not_imported_and_is_generated_again(tmp_path, monkeypatch):
    from cloudkd.data.landsat import synth as lsynth

    cfg = lsynth.Landsat38Config(n_train_scenes=1, n_test_scenes=0, min_grid=1, max_grid=1, oversample=1,
                                 p_partial=0.0)
    root = tmp_path / "l8"
    _kill_at(monkeypatch, generation, "synth38.json")
    _kill_at(monkeypatch, lsynth, "synth38.json")
    with pytest.raises(KeyboardInterrupt):
        lsynth.synthesize_38cloud(root, cfg, progress=False)
    monkeypatch.undo()
    assert (root / "38-Cloud_training" / "train_red").is_dir()
    for where in (root, root / "38-Cloud_training"):
        with pytest.raises(DataError, match="generation did not finish"):
            resolve_split(where)
    again = lsynth.synthesize_38cloud(root, cfg, progress=False)
    assert not again.reused and not (root / UNFINISHED).exists()
    assert json.loads((root / "synth38.json").read_text())["config"]["n_train_scenes"] == 1


# ---------------------------------------------------------------------------- 5. teacher info's advice
def test_teacher_info_names_real_commands(tmp_path):
    from cloudkd.teacher.info import info
    from cloudkd.teacher.workspace import Workspace

    ws = Workspace(tmp_path / "nnunet")
    (ws.raw / "Dataset501_OnCloudN").mkdir(parents=True)  # prepared, not yet planned
    with pytest.raises(DataError) as exc:
        info(ws, 501)
    msg = str(exc.value)
    assert "'cloudkd teacher train'" in msg and "cloudkd teacher prepare" in msg
    assert "teacher plan" not in msg
