"""Issue 29 ("Trust"): an output path of the wrong kind (a folder where a file goes, a file where a folder goes) or
one that lies under a file is refused in one line naming the path, before any work and with nothing written; a
count of worker processes or threads above this machine's cores is refused before anything starts; ``teacher
prepare`` claims its workdir like every other output folder. Each test failed on the code before its fix."""

import json
import os

import pytest

from conftest import invoke, one_line_refusal, snapshot, user_folder

#: command -> (arguments with {out} for the output under test, what that output must be: "file" or "folder")
OUTPUTS = {
    "folds-out": (["data", "folds", "{data}", "--out", "{out}", "--k", "2"], "file"),
    "score-json": (["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--json", "{out}",
                    "--report-dir", "{w}/rep"], "file"),
    "score-report-dir": (["evaluate", "score", "--pred", "{labels}", "--labels", "{labels}", "--report-dir",
                          "{out}"], "folder"),
    "synth": (["data", "synth", "{out}", "--n-train", "2", "--n-test", "1", "--size", "32", "--workers", "1"],
              "folder"),
    "student-train": (["student", "train", "{data}", "--out", "{out}", "--model", "unet-xs", "--epochs", "1",
                       "--steps", "1", "--batch", "2", "--crop", "32", "--accelerator", "cpu"], "folder"),
    "export": (["onboard", "export", "--checkpoint", "{w}/no_run", "--out", "{out}", "--no-int8", "--no-memory"],
               "folder"),
    "teacher-prepare": (["teacher", "prepare", "{data}", "--workdir", "{out}"], "folder"),
    "demo-workdir": (["demo", "--quick", "--data", "{w}/d", "--workdir", "{out}"], "folder"),
    "demo-data": (["demo", "--quick", "--data", "{out}", "--workdir", "{w}/run"], "folder"),
    "audit-out": (["evaluate", "audit", "{data}", "--model", "{w}/no_run", "--out", "{out}"], "folder"),
    "landsat-score-masks": (["landsat", "score", "--pred", "{w}/p", "--data", "{data}", "--masks", "{out}"],
                            "folder"),
    "landsat-score-json": (["landsat", "score", "--pred", "{w}/p", "--data", "{data}", "--json", "{out}"], "file"),
}
CASES = [(cmd, how) for cmd in OUTPUTS for how in ("wrong-kind", "under-a-file")]


@pytest.mark.parametrize("cmd, how", CASES, ids=[f"{c}:{h}" for c, h in CASES])
def test_an_output_of_the_wrong_kind_or_under_a_file_is_refused_in_one_line(small_data, tmp_path, capsys, cmd, how):
    w = tmp_path / "w"
    w.mkdir()
    (w / "a_file").write_text("the user's file\n")
    (w / "a_folder").mkdir()
    args, kind = OUTPUTS[cmd]
    if how == "wrong-kind":
        out = w / ("a_folder" if kind == "file" else "a_file")
        says = f"{out}: " + ("is a folder" if kind == "file" else "is a file, not a folder")
    else:
        out = w / "a_file" / "sub" / ("x.csv" if kind == "file" else "out")
        says = f"{out}: lies under the file {w / 'a_file'}"
    fill = {"data": small_data, "labels": small_data / "test_labels", "w": w, "out": out}
    before = snapshot(w, small_data)
    code, text = invoke([a.format(**fill) for a in args], capsys)
    one_line_refusal(code, text, says)
    assert snapshot(w, small_data) == before, f"{cmd} wrote something"


def test_score_refuses_a_default_report_folder_that_is_a_file(small_data, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    args = ["evaluate", "score", "--pred", pred, "--labels", small_data / "test_labels"]
    report = tmp_path / "pred_score"  # the default report folder, PRED's sibling
    report.write_text("the user's file\n")
    before = snapshot(tmp_path)
    one_line_refusal(*invoke(args, capsys), f"{report}: is a file, not a folder")
    assert snapshot(tmp_path) == before
    report.unlink()
    (report / "per_chip.csv").mkdir(parents=True)  # a folder where its per-chip CSV goes
    before = snapshot(tmp_path)
    one_line_refusal(*invoke(args, capsys), f"{report / 'per_chip.csv'}: is a folder")
    assert snapshot(tmp_path) == before


#: options that start processes or threads, and a command line to try each on (nothing there needs to exist)
COUNTS = {
    "synth-workers": ["data", "synth", "{w}/new", "--n-train", "2", "--n-test", "1", "--size", "32", "--workers"],
    "predict-scene-threads": ["onboard", "predict-scene", "{w}/scene.tif", "--model", "{w}/m.onnx", "--out",
                              "{w}/mask.tif", "--threads"],
    "bench-threads": ["onboard", "bench", "--out", "{w}/bench", "--threads"],
    "score-workers": ["evaluate", "score", "--pred", "{w}/p", "--labels", "{w}/l", "--workers"],
    "train-workers": ["student", "train", "{w}/data", "--out", "{w}/run", "--workers"],
}


@pytest.mark.parametrize("cmd", sorted(COUNTS))
def test_more_workers_or_threads_than_cores_are_refused_before_any_work(tmp_path, capsys, cmd):
    w = tmp_path / "w"
    w.mkdir()
    option = COUNTS[cmd][-1]
    for n in (100000, (os.cpu_count() or 1) + 1):
        code, text = invoke([a.format(w=w) for a in COUNTS[cmd]] + [n], capsys)
        one_line_refusal(code, text, option)
        assert "must be between" in text and f"got {n}" in text and "CPU cores" in text, text
        assert not any(w.iterdir()), f"{cmd} wrote something"


def test_teacher_prepare_claims_its_workdir(small_data, tmp_path, capsys):
    prep = ["teacher", "prepare", small_data, "--k", 2, "--workdir"]
    # a user's folder with other content: refused (there is no --force that would change it), nothing written
    mine = user_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    one_line_refusal(*invoke(prep + [mine], capsys), f"--workdir {mine} was not written by cloudkd")
    # cloudkd's folder of another kind: refused
    run = tmp_path / "run"
    run.mkdir()
    (run / ".cloudkd.json").write_text(json.dumps({"writer": "cloudkd", "kind": "student-run", "command": "x"}))
    before = snapshot(tmp_path)
    one_line_refusal(*invoke(prep + [run], capsys), "not a teacher-workspace")
    assert snapshot(tmp_path) == before

    # a new folder: prepared and marked as cloudkd's workspace; prepared again: reused
    ws = tmp_path / "ws"
    code, text = invoke(prep + [ws], capsys)
    assert code == 0 and "prepared in" in text, text
    assert json.loads((ws / ".cloudkd.json").read_text())["kind"] == "teacher-workspace"
    code, text = invoke(prep + [ws], capsys)
    assert code == 0 and "already prepared (same data and folds)" in text, text
    # a workspace from before the mark (only what cloudkd puts in a workspace) is cloudkd's too: reused, marked
    (ws / ".cloudkd.json").unlink()
    code, text = invoke(prep + [ws], capsys)
    assert code == 0 and "already prepared" in text, text
    assert (ws / ".cloudkd.json").is_file()
