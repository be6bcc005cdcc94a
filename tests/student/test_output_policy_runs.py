"""The output policy (issue 29, phase 2) for the student's run folders and its predictions, and the student's
tracebacks of issue 29 turned into one-line errors. Each test failed on the code before its fix.

- ``student train/distill --out OUT``: OUT is a run folder cloudkd wrote (kind "student-run"), or new or empty;
  a folder cloudkd did not write is refused even with --force; OUT is locked while training; --force builds the
  new run beside OUT and swaps it in at the end, so a failed or killed retraining leaves the old run usable; OUT
  is kept apart from every input.
- ``student predict``: its masks are kept apart from its features and its model (a features folder has no
  record to protect it).
- A damaged student.pt, an accelerator the machine lacks: exit code 2, one line, nothing written."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from cloudkd.common import outputs as O
from conftest import invoke, one_line_refusal, snapshot, user_folder


_one_line_refusal = one_line_refusal


def _train(data, out, *extra):
    return ["student", "train", data, "--out", out, "--model", "unet-xs", "--epochs", 1, "--steps", 1, "--batch", 2,
            "--crop", 32, "--accelerator", "cpu", *extra]


_user_folder = user_folder


def _no_build_beside(folder):
    assert not O.build_path(folder).exists() and not O.lock_path(folder).exists()


# ---------------------------------------------------------------------------------------------------------------
# student train / distill: the run folder
# ---------------------------------------------------------------------------------------------------------------
def test_train_force_never_trains_into_a_folder_cloudkd_did_not_write(small_data, tmp_path, capsys):
    user = _user_folder(tmp_path / "user")
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        code, text = invoke(_train(small_data, user, *extra), capsys)
        _one_line_refusal(code, text, "was not written by cloudkd")
        assert snapshot(tmp_path) == before


def test_a_second_training_into_a_locked_run_folder_is_refused_and_a_stale_lock_taken_over(small_data, tmp_path,
                                                                                             capsys):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the lock of a training that is running (the process that took it is alive)
        O.lock_path(out).write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        code, text = invoke(_train(small_data, out), capsys)
        _one_line_refusal(code, text, f"pid {sleeper.pid}")
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    code, text = invoke(_train(small_data, out), capsys)  # its process is gone: a stale lock, taken over
    assert code == 0, text
    assert (out / "student.pt").is_file() and O.folder_mark(out)["kind"] == "student-run"
    _no_build_beside(out)


def test_a_new_run_that_fails_leaves_nothing(small_data, tmp_path, capsys):
    """A chip that cannot be read stopped a new training after OUT was claimed: OUT was left with cloudkd's marker,
    run.json and the log folders, and the next training into it was refused as an interrupted run (nothing to
    resume). A new or empty OUT is now left as it was when no checkpoint was saved."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    for band in (data / "train_features").glob("*/B04.tif"):
        band.write_bytes(b"not a TIFF")
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    for out in (tmp_path / "run", tmp_path / "empty"):
        code, text = invoke(_train(data, out), capsys)
        last = [line for line in text.splitlines() if line.strip()][-1]
        assert code == 2 and "Traceback" not in text and last.startswith("error: ") and "B04.tif" in last, text
        after = snapshot(tmp_path)
        after.pop(str(tmp_path / "empty"))  # emptied again (its time changes)
        assert after == {k: v for k, v in before.items() if k != str(tmp_path / "empty")}, out
        assert not any((tmp_path / "empty").iterdir())


@pytest.fixture
def old_run(small_data, tmp_path, capsys):
    run = tmp_path / "run"
    code, text = invoke(_train(small_data, run), capsys)
    assert code == 0, text
    return run


def test_train_force_keeps_the_old_run_until_the_new_one_has_finished(small_data, old_run, monkeypatch, capsys):
    """A retraining that fails after it wrote its checkpoints (as a kill would) leaves the old run as it was;
    one that finishes replaces it whole."""
    import cloudkd.student.train as T
    from cloudkd.student.runs import load_student

    before = snapshot(old_run)
    weights = (old_run / "student.pt").read_bytes()

    def killed(*a, **k):
        raise KeyboardInterrupt  # what the user's Ctrl-C looks like at the end of training

    monkeypatch.setattr(T, "export_best", killed)
    code, text = invoke(_train(small_data, old_run, "--force", "--model", "unet-s"), capsys)
    assert code == 130, text  # interrupted
    assert snapshot(old_run) == before and (old_run / "student.pt").read_bytes() == weights
    load_student(old_run)
    _no_build_beside(old_run)

    monkeypatch.undo()
    code, text = invoke(_train(small_data, old_run, "--force", "--model", "unet-s"), capsys)
    assert code == 0, text
    info = json.loads((old_run / "student.json").read_text())
    assert info["model"] == "unet-s" and info["config"]["out"] == str(old_run)
    assert O.folder_mark(old_run)["kind"] == "student-run"
    assert sorted(p.name for p in (old_run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (old_run / "logs").iterdir()] == ["version_0"]  # the old run's logs went with it
    load_student(old_run)
    _no_build_beside(old_run)
    # and it resumes in place
    code, text = invoke(_train(small_data, old_run, "--model", "unet-s", "--resume", "--epochs", 2), capsys)
    assert code == 0, text
    assert torch.load(old_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1


def test_train_output_is_kept_apart_from_every_input(small_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    (tmp_path / "soft").mkdir()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "exclude.txt").write_text("")
    before = snapshot(tmp_path)
    cases = [(data, []), (data / "run", []), (tmp_path, []),
             (tmp_path / "soft", ["--soft", tmp_path / "soft"]), (tmp_path / "soft" / "run", ["--soft", tmp_path / "soft"]),
             (tmp_path / "lists", ["--exclude", tmp_path / "lists" / "exclude.txt"]),
             (tmp_path / "nn" / "run", ["--teacher-nnunet", tmp_path / "nn"])]
    for out, extra in cases:
        for force in ([], ["--force"]):
            code, text = invoke(_train(data, out, *extra, *force), capsys)
            _one_line_refusal(code, text, "the input")
            assert snapshot(tmp_path) == before, (out, extra, force)


def test_train_on_a_gpu_the_machine_lacks_says_so_in_one_line(small_data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = _train(small_data, tmp_path / "run")
    args[args.index("cpu")] = "gpu"
    code, text = invoke(args, capsys)
    _one_line_refusal(code, text, "--accelerator")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# predict: outputs apart from the inputs
# ---------------------------------------------------------------------------------------------------------------
def test_student_predict_never_writes_into_or_onto_its_features_or_model(small_data, student, tmp_path, capsys):
    feats = tmp_path / "test_features"  # a features folder without a metadata CSV beside it
    shutil.copytree(small_data / "test_features", feats)
    run = tmp_path / "run"
    shutil.copytree(student, run)
    chip = sorted(p for p in feats.iterdir())[0]
    before = snapshot(tmp_path)
    for out, extra in [(chip, ["--force"]), (feats / "masks", []), (feats / "masks", ["--force"]), (feats, []),
                       (run / "masks", []), (tmp_path, ["--force"])]:
        code, text = invoke(["student", "predict", "--model", run, "--features", feats, "--out", out, *extra],
                            capsys)
        _one_line_refusal(code, text, "the input")
        assert snapshot(tmp_path) == before, (out, extra)


# ---------------------------------------------------------------------------------------------------------------
# tracebacks of issue 29 -> one line
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"garbage, not a state dict"], ids=["empty", "garbage"])
def test_a_damaged_student_pt_is_one_line_in_predict_export_and_pack(student, small_data, tmp_path, capsys,
                                                                     content):
    run = tmp_path / "run"
    shutil.copytree(student, run)
    (run / "student.pt").write_bytes(content)
    before = snapshot(tmp_path)
    for args in (["student", "predict", "--model", run, "--features", small_data / "test_features", "--out",
                  tmp_path / "m"],
                 ["onboard", "export", "--checkpoint", run, "--out", tmp_path / "e", "--no-int8", "--no-memory"],
                 ["submission", "pack", "--checkpoint", run, "--out", tmp_path / "s.zip"]):
        code, text = invoke(args, capsys)
        _one_line_refusal(code, text, "student.pt")
        assert snapshot(tmp_path) == before, args
