"""Every command with bad arguments: exit code 2, one line naming the argument and the problem, no traceback, and
nothing changed on disk. Then the data-loss and wrong-result cases, each of which a test reproduced first."""

import os
import shutil

import pytest

from conftest import invoke, snapshot


@pytest.fixture(scope="module")
def world(small_data, student, tmp_path_factory):
    """A user's workspace: a dataset, a trained student run, an existing run folder, a zip and a folder."""
    w = tmp_path_factory.mktemp("world")
    data = w / "data"
    shutil.copytree(small_data, data)
    run = w / "run"
    shutil.copytree(student, run)
    (w / "existing").mkdir()
    (w / "existing" / "keep.txt").write_text("the user's file\n")
    (w / "submission.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an (empty) zip the user already has
    (w / "a_file").write_text("not a folder\n")
    return {"w": w, "data": data, "run": run, "train": data / "train_features", "test": data / "test_features",
            "labels": data / "test_labels"}


# (case id, args with {placeholders}, what the one-line error must mention)
CASES = [
    ("synth-size", ["data", "synth", "{w}/new", "--size", 100000], "--size"),
    ("synth-n", ["data", "synth", "{w}/new", "--n-train", -1], "--n-train"),
    ("synth-unwritable", ["data", "synth", "{w}/a_file/new"], "is a file"),
    ("folds-k0", ["data", "folds", "{data}", "--out", "{w}/f.csv", "--k", 0], "--k"),
    ("folds-k1", ["data", "folds", "{data}", "--out", "{w}/f.csv", "--k", 1], "--k"),
    ("folds-k-2", ["data", "folds", "{data}", "--out", "{w}/f.csv", "--k", -2], "--k"),
    ("folds-seed", ["data", "folds", "{data}", "--out", "{w}/f.csv", "--seed", -1], "--seed"),
    ("folds-unwritable", ["data", "folds", "{data}", "--out", "{w}/a_file/f.csv"], "is a file"),
    ("preview-n", ["data", "preview", "{data}", "--out", "{w}/p.png", "--n", 0], "--n"),
    ("threshold-stride", ["baseline", "threshold", "fit", "{data}", "--out", "{w}/t.json", "--stride", 0], "--stride"),
    ("threshold-val-fold-alone", ["baseline", "threshold", "fit", "{data}", "--out", "{w}/t.json", "--val-fold", 1],
     "--val-fold needs --folds"),
    ("threshold-into-labels", ["baseline", "threshold", "predict", "--model", "{w}/t.json", "--features", "{test}",
                               "--out", "{labels}"], "inside the dataset"),
    ("teacher-id", ["teacher", "prepare", "{data}", "--dataset-id", 1000], "--dataset-id"),
    ("teacher-k", ["teacher", "prepare", "{data}", "--workdir", "{w}/nn", "--k", 1], "--k"),
    ("teacher-device", ["teacher", "train", "--workdir", "{w}/nn", "--device", "bogus"], "--device"),
    ("teacher-cuda7", ["teacher", "train", "--workdir", "{w}/nn", "--device", "cuda:7"], "--device"),
    ("teacher-epochs", ["teacher", "train", "--workdir", "{w}/nn", "--epochs", 0], "--epochs"),
    ("teacher-batch", ["teacher", "train", "--workdir", "{w}/nn", "--batch", 0], "--batch"),
    ("teacher-patch", ["teacher", "train", "--workdir", "{w}/nn", "--patch", 7], "--patch"),
    ("teacher-fold", ["teacher", "train", "--workdir", "{w}/nn", "--fold", -1], "--fold"),
    ("teacher-predict-labels", ["teacher", "predict", "--features", "{test}", "--workdir", "{w}/nn",
                                "--masks-out", "{labels}"], "inside the dataset"),
    ("teacher-predict-nothing", ["teacher", "predict", "--features", "{test}", "--workdir", "{w}/nn"],
     "nothing to write"),
    ("teacher-info-id", ["teacher", "info", "--dataset-id", 0], "--dataset-id"),
    ("train-epochs-1", ["student", "train", "{data}", "--out", "{w}/r", "--epochs", -1], "--epochs"),
    ("train-epochs0", ["student", "train", "{data}", "--out", "{w}/r", "--epochs", 0], "--epochs"),
    ("train-steps0", ["student", "train", "{data}", "--out", "{w}/r", "--steps", 0], "--steps"),
    ("train-crop7", ["student", "train", "{data}", "--out", "{w}/r", "--crop", 7], "--crop"),
    ("train-crop-huge", ["student", "train", "{data}", "--out", "{w}/r", "--crop", 100000], "--crop"),
    ("train-memory", ["student", "train", "{data}", "--out", "{w}/r", "--crop", 4096, "--batch", 512], "memory"),
    ("train-devices0", ["student", "train", "{data}", "--out", "{w}/r", "--devices", 0], "--devices"),
    ("train-lr0", ["student", "train", "{data}", "--out", "{w}/r", "--lr", 0], "--lr"),
    ("train-paste", ["student", "train", "{data}", "--out", "{w}/r", "--cloud-paste", 2], "--cloud-paste"),
    ("distill-kd-nan", ["student", "distill", "{data}", "--out", "{w}/r", "--soft", "{w}", "--kd-weight", "nan"],
     "--kd-weight"),
    ("distill-temperature", ["student", "distill", "{data}", "--out", "{w}/r", "--soft", "{w}", "--temperature", 0],
     "--temperature"),
    ("train-resume-nothing", ["student", "train", "{data}", "--out", "{w}/r", "--resume"], "nothing to resume"),
    ("train-over-a-run", ["student", "train", "{data}", "--out", "{run}"], "--force replaces it"),
    ("train-resume-force", ["student", "train", "{data}", "--out", "{run}", "--resume", "--force"], "give one"),
    ("train-unwritable", ["student", "train", "{data}", "--out", "{w}/a_file/r"], "is a file"),
    ("predict-batch0", ["student", "predict", "--model", "{run}", "--features", "{test}", "--out", "{w}/m",
                        "--batch", 0], "--batch"),
    ("predict-batch-1", ["student", "predict", "--model", "{run}", "--features", "{test}", "--out", "{w}/m",
                         "--batch", -1], "--batch"),
    ("predict-into-labels", ["student", "predict", "--model", "{run}", "--features", "{test}", "--out",
                             "{labels}"], "inside the dataset"),
    ("predict-into-features", ["student", "predict", "--model", "{run}", "--features", "{test}", "--out",
                               "{test}/masks"], "inside the dataset"),
    ("predict-threshold", ["student", "predict", "--model", "{run}", "--features", "{test}", "--out", "{w}/m",
                           "--threshold", 2], "--threshold"),
    ("score-fold-alone", ["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--fold", 1],
     "--fold needs --folds"),
    ("score-workers", ["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--workers", 0],
     "--workers"),
    ("score-json-unwritable", ["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--json",
                               "{w}/a_file/s.json"], "is a file"),
    ("export-calib-1", ["onboard", "export", "--checkpoint", "{run}", "--out", "{w}/e", "--n-calib", -1],
     "--n-calib"),
    ("export-check0", ["onboard", "export", "--checkpoint", "{run}", "--out", "{w}/e", "--n-check", 0], "--n-check"),
    ("export-size0", ["onboard", "export", "--checkpoint", "{run}", "--out", "{w}/e", "--size", 0], "--size"),
    ("export-size7", ["onboard", "export", "--checkpoint", "{run}", "--out", "{w}/e", "--size", 7], "--size"),
    ("export-unwritable", ["onboard", "export", "--checkpoint", "{run}", "--out", "{w}/a_file/e"], "is a file"),
    ("scene-tile", ["onboard", "predict-scene", "{w}", "--model", "{run}", "--out", "{w}/s.tif", "--tile", 7],
     "--tile"),
    ("scene-overlap", ["onboard", "predict-scene", "{w}", "--model", "{run}", "--out", "{w}/s.tif", "--overlap",
                       -1], "--overlap"),
    ("bench-threads", ["onboard", "bench", "--threads", 0, "--out", "{w}/b"], "--threads"),
    ("pack-threshold2", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/z.zip", "--threshold", 2],
     "--threshold"),
    ("pack-threshold-1", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/z.zip", "--threshold", -1],
     "--threshold"),
    ("pack-threshold-nan", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/z.zip", "--threshold",
                            "nan"], "--threshold"),
    ("pack-chip7", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/z.zip", "--chip-size", 7],
     "--chip-size"),
    ("pack-out-folder", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/existing"], "is a folder"),
    ("pack-out-exists", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/submission.zip"],
     "--force replaces it"),
    ("runtime-keep", ["submission", "runtime-test", "--zip", "{w}/submission.zip", "--data", "{data}", "--keep",
                      "{w}/existing"], "--keep"),
    ("runtime-json-unwritable", ["submission", "runtime-test", "--zip", "{w}/submission.zip", "--data", "{data}",
                                 "--json", "{w}/a_file/v.json"], "is a file"),
    ("landsat-scenes", ["landsat", "synth", "{w}/l", "--train-scenes", -1], "--train-scenes"),
    ("threshold-fit-unwritable", ["baseline", "threshold", "fit", "{data}", "--out", "{w}/a_file/t.json"],
     "is a file"),
    ("threshold-predict-unwritable", ["baseline", "threshold", "predict", "--model", "{w}/t.json", "--features",
                                      "{test}", "--out", "{w}/a_file/m"], "is a file"),
    ("teacher-predict-unwritable", ["teacher", "predict", "--features", "{test}", "--workdir", "{w}/nn",
                                    "--soft-out", "{w}/a_file/s"], "is a file"),
    ("predict-unwritable", ["student", "predict", "--model", "{run}", "--features", "{test}", "--out",
                            "{w}/a_file/m"], "is a file"),
    ("pack-unwritable", ["submission", "pack", "--checkpoint", "{run}", "--out", "{w}/a_file/z.zip"], "is a file"),
    ("real-bench-unwritable", ["evaluate", "real-bench", "{data}", "--out", "{w}/a_file/rb"], "is a file"),
    ("unknown-command", ["data", "bogus"], "No such command"),
    ("unknown-option", ["student", "train", "{data}", "--out", "{w}/r", "--bogus"], "--bogus"),
]


@pytest.mark.parametrize("case, args, says", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_exit_2_with_one_line_and_change_nothing(world, capsys, case, args, says):
    args = [str(a).format(**{k: v for k, v in world.items()}) for a in args]
    before = snapshot(world["w"])
    code, out = invoke(args, capsys)
    assert code == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert says in lines[0], out
    assert snapshot(world["w"]) == before, f"{case} changed files on disk"


# ----------------------------------------------------------------------------------------------------------------
# Data loss and silently wrong results (each reproduced on the code before the fix)
# ----------------------------------------------------------------------------------------------------------------
def test_a_new_run_in_an_old_run_folder_does_not_keep_or_resume_the_old_checkpoints(small_data, student, tmp_path):
    """`train` into an existing --out used to replace student.pt but keep the old last.ckpt, which a later --resume
    then loaded (a size-mismatch traceback for another model). The command line asks for --force; the library
    starts the new run without the old checkpoints."""
    from cloudkd.common.errors import DataError
    from cloudkd.student.train import TrainConfig, fit

    run = tmp_path / "run"
    shutil.copytree(student, run)  # a unet-s run with its checkpoints
    old = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in old
    cfg = dict(data=str(small_data), out=str(run), model="unet-xs", epochs=1, batch_size=4, crop=64,
               accelerator="cpu", progress=False, limit_train_batches=1)
    fit(TrainConfig(**cfg))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no best-v1
    fit(TrainConfig(**{**cfg, "epochs": 2, "resume": True}))  # resumes the unet-xs run, not the old unet-s one
    with pytest.raises(DataError, match="nothing to resume"):
        fit(TrainConfig(**{**cfg, "out": str(tmp_path / "empty"), "resume": True}))


def test_masks_of_two_models_never_mix_in_one_folder(small_data, student, tmp_path, capsys):
    test = small_data / "test_features"
    out = tmp_path / "masks"
    code, text = invoke(["student", "predict", "--model", student, "--features", test, "--out", out], capsys)
    assert code == 0, text
    first = {p.name: p.read_bytes() for p in out.glob("*.tif")}
    assert len(first) == 10
    code, text = invoke(["student", "predict", "--model", student, "--features", test, "--out", out,
                         "--threshold", "0.2"], capsys)  # another model (the rule's threshold is part of it)
    assert code == 2 and "holds masks of student" in text and "--force" in text, text
    assert {p.name: p.read_bytes() for p in out.glob("*.tif")} == first
    code, text = invoke(["student", "predict", "--model", student, "--features", test, "--out", out], capsys)
    assert code == 0, text  # the same model again: allowed
    code, text = invoke(["student", "predict", "--model", student, "--features", test, "--out", out,
                         "--threshold", "0.2", "--force"], capsys)
    assert code == 0, text
    assert "threshold 0.2" in (out / ".cloudkd-masks.json").read_text()
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "x.tif").write_bytes(b"someone's mask")
    code, text = invoke(["student", "predict", "--model", student, "--features", test, "--out", tmp_path / "loose"],
                        capsys)
    assert code == 2 and "unknown model" in text
    assert (tmp_path / "loose" / "x.tif").read_bytes() == b"someone's mask"


def test_landsat_import_does_not_replace_a_folder_it_did_not_write(tmp_path, capsys):
    from cloudkd.data.landsat.synth import Landsat38Config, synthesize_38cloud

    root = tmp_path / "l8"
    synthesize_38cloud(root, Landsat38Config(n_train_scenes=1, n_test_scenes=1, min_grid=1, max_grid=1),
                       progress=False)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's\n")
    code, text = invoke(["landsat", "import", root, "--out", out], capsys)
    assert code == 2 and "not this dataset's import" in text, text
    assert (out / "notes.txt").read_text() == "the user's\n"
    code, text = invoke(["landsat", "import", root, "--out", tmp_path / "fresh"], capsys)
    assert code == 0, text
    code, text = invoke(["landsat", "import", root, "--out", tmp_path / "fresh", "--force"], capsys)
    assert code == 0, text  # its own import may be refreshed
    code, text = invoke(["landsat", "import", root, "--out", out, "--force"], capsys)
    assert code == 2 and "was not written by cloudkd" in text, text  # not even with --force (issue 29)
    assert (out / "notes.txt").read_text() == "the user's\n"


def test_training_refuses_a_dataset_whose_generation_did_not_finish(small_data, tmp_path):
    from cloudkd.common.errors import DataError
    from cloudkd.data import load_index, resolve_split
    from cloudkd.data.chips import UNFINISHED

    data = tmp_path / "d"
    shutil.copytree(small_data, data)
    load_index(resolve_split(data, "train"))
    (data / UNFINISHED).write_text("{}")
    with pytest.raises(DataError, match="generation did not finish"):
        load_index(resolve_split(data, "train"))


def test_a_chip_with_a_symlink_loop_still_reaches_main_py(student, small_data, tmp_path):
    """The emulator used to die copying a chip whose band is a symlink loop, so main.py never ran; links are
    copied as links now and main.py gives that chip its logged fallback."""
    from cloudkd.data import resolve_split
    from cloudkd.submission.emulate import runtime_test
    from cloudkd.submission.pack import pack

    test = resolve_split(small_data, "test")
    feats = tmp_path / "d" / "test_features"
    shutil.copytree(test.features_dir, feats)
    shutil.copy(test.metadata_csv, tmp_path / "d" / "test_metadata.csv")
    cid = test.chip_ids()[0]
    band = feats / cid / "B03.tif"
    band.unlink()
    os.symlink(feats / cid / "B03b.tif", band)
    os.symlink(band, feats / cid / "B03b.tif")
    z = tmp_path / "s.zip"
    pack(student, z, chip_size=96)
    v = runtime_test(z, tmp_path / "d", keep=tmp_path / "root", echo=False)
    assert v["returncode"] == 0 and v["n_chips"] == len(test.chip_ids()) and not v["missing"], v["reasons"]
    assert v["ok"], v["reasons"]  # a chip main.py could not read may take a fallback
    assert f"{cid}: B03.tif" in v["log"]
