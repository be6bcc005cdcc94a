"""Student training: validation by the one prediction rule, the online teacher's folds (no leak of validation
labels), the teacher built on each process's own device, and --resume refusing a changed run."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from conftest import invoke, make_dataset, one_line_refusal, snapshot


# ------------------------------------------------------------------------------------------- helpers
class Constant(torch.nn.Module):
    """A "network" giving the same cloud logit everywhere (a parameter so that Lightning has one to place)."""

    def __init__(self, logit: float):
        super().__init__()
        self.z = torch.nn.Parameter(torch.tensor(float(logit)))

    def forward(self, x):
        return self.z.expand(x.shape[0], 1, *x.shape[2:])


def _two_chip_dataset(root: Path, size: int = 32):
    """Chip 'val' (fold 0) with a nodata strip (DN 0 in all four bands, labelled clear as the data has it), a
    pixel at 0 in only two bands (data) and cloud labelled everywhere else; chip 'trn' (fold 1)."""
    rng = np.random.default_rng(0)
    val = rng.integers(500, 4000, (4, size, size)).astype(np.uint16)
    val[:, :8, :] = 0  # nodata: 8 rows
    val[:2, 20, 20] = 0  # two bands at 0: data, not nodata
    lab = np.ones((size, size), np.uint8)
    lab[:8, :] = 0
    trn = rng.integers(500, 4000, (4, size, size)).astype(np.uint16)
    make_dataset(root, {"val": val, "trn": trn}, labels={"val": lab, "trn": np.zeros((size, size), np.uint8)},
                 locations={"val": "a", "trn": "b"})
    folds = root.parent / f"{root.name}_folds.csv"
    pd.DataFrame({"chip_id": ["trn", "val"], "location": ["b", "a"], "fold": [1, 0]}).to_csv(folds, index=False)
    return folds


# ------------------------------------------------------------------------- 1. validation = the prediction rule
def test_image_nodata_finds_exactly_the_reflectance_nodata_in_normalised_chips(tmp_path):
    from cloudkd.common.infer import nodata_mask
    from cloudkd.data import read_chip, resolve_split
    from cloudkd.data.dataset import ChipDataset, image_nodata
    from cloudkd.data.chips import load_index

    _two_chip_dataset(tmp_path / "d")
    split = resolve_split(tmp_path / "d")
    ds = ChipDataset(load_index(split))
    for i, cid in enumerate(ds.index["chip_id"]):
        want = nodata_mask(read_chip(split.chip_dir(cid)))
        got = image_nodata(ds[i]["image"][None])[0]
        assert np.array_equal(got, want), cid
    assert image_nodata(ds[list(ds.index["chip_id"]).index("val")]["image"]).sum() == 8 * 32


@pytest.mark.parametrize("threshold,cloud_predicted", [(0.5, True), (0.6, False)])
def test_validation_scores_the_prediction_rule_nodata_clear_at_the_runs_threshold(tmp_path, threshold,
                                                                                   cloud_predicted):
    """A model predicting cloud probability sigmoid(0.3) = 0.574 everywhere, validated through the data module:
    at threshold 0.5 it predicts cloud everywhere, but the nodata strip counts clear as every prediction path
    makes it (not as false cloud); at 0.6 it predicts nothing."""
    from cloudkd.data.datamodule import CloudDataModule
    from cloudkd.student.module import StudentModule

    folds = _two_chip_dataset(tmp_path / "d")
    module = StudentModule("unet-xs", threshold=threshold)
    module.model = Constant(0.3)
    dm = CloudDataModule(tmp_path / "d", folds=folds, val_fold=0, batch_size=1, crop=32)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]
    c = module._val
    n, nodata = 32 * 32, 8 * 32
    if cloud_predicted:
        assert (c.tp, c.fp, c.fn, c.tn) == (n - nodata, 0, 0, nodata)
        assert logged["val_jaccard"] == pytest.approx(1.0)
    else:
        assert (c.tp, c.fp, c.fn, c.tn) == (0, 0, n - nodata, nodata)
        assert logged["val_jaccard"] == 0.0


# ------------------------------------------------------------------ 2./3. the online nnU-Net teacher: folds, device
class FakeTeacher(torch.nn.Module):
    """Stands in for the trained nnU-Net: records what it was built with; a module with a parameter, so that a
    teacher registered as a submodule would show in the student's checkpoints."""

    threshold = 0.5  # its masks' threshold (distillation uses its logits, never this)

    def __init__(self, workspace, folds, device):
        super().__init__()
        self.workspace, self.folds, self.device = workspace, folds, device
        self.w = torch.nn.Parameter(torch.ones(()))
        self.inputs = []

    def logits(self, x):
        self.inputs.append(x.device)
        return x[:, :1] * 0 + 1.0


@pytest.fixture(scope="module")
def teacher_ws(small_data, tmp_path_factory):
    """A teacher workspace prepared by 'teacher prepare' from 3 location folds (its splits_final.json is the real
    one), with teacher.json claiming folds 0, 1 and 2 trained (training nnU-Net is test_teacher's business)."""
    from cloudkd.data.chips import load_index
    from cloudkd.data import resolve_split
    from cloudkd.data.folds import make_folds, write_folds
    from cloudkd.teacher.convert import prepare
    from cloudkd.teacher.workspace import Workspace

    work = tmp_path_factory.mktemp("teacher_ws")
    folds = make_folds(load_index(resolve_split(small_data)), k=3, seed=0)
    write_folds(folds, work / "folds.csv")
    ws = Workspace(work / "ws")
    prep = prepare(small_data, ws, folds=folds, workers=1, progress=False)
    record = {"dataset_name": prep.dataset_name,
              "model_folder": str(ws.results / "none"), "folds": [0, 1, 2]}
    ws.teacher_json.write_text(json.dumps(record))
    for f in record["folds"]:  # a trained fold has its (whole) checkpoint, which distill checks before training
        (ws.results / "none" / f"fold_{f}").mkdir(parents=True)
        torch.save({}, ws.results / "none" / f"fold_{f}" / "checkpoint_final.pth")
    return {"ws": ws, "folds_csv": work / "folds.csv", "folds": folds, "data": small_data}


@pytest.fixture
def fake_nnunet(monkeypatch):
    """NnUNetTeacher.from_workspace replaced by a recorder; ``events`` logs Trainer construction and teacher builds
    in order."""
    from cloudkd.teacher.model import NnUNetTeacher

    built, events = [], []

    def from_workspace(workspace, folds=None, **kw):
        t = FakeTeacher(workspace, folds, kw.get("device"))
        built.append(t)
        events.append(("teacher", t.device))
        return t

    monkeypatch.setattr(NnUNetTeacher, "from_workspace", staticmethod(from_workspace))
    init = pl.Trainer.__init__

    def trainer_init(self, *a, **k):
        events.append("trainer")
        init(self, *a, **k)

    monkeypatch.setattr(pl.Trainer, "__init__", trainer_init)
    return built, events


def _distill_args(tw, out, *extra):
    return ["student", "distill", tw["data"], "--out", out, "--teacher-nnunet", tw["ws"].root, "--folds",
            tw["folds_csv"], "--model", "unet-xs", "--epochs", 1, "--steps", 1, "--batch", 2, "--crop", 32,
            "--accelerator", "cpu", *extra]


def test_splits_of_teacher_prepare_number_folds_like_the_students(teacher_ws):
    """Teacher fold k validates on exactly the chips of the student's val fold k (same folds file)."""
    from cloudkd.data.chips import load_index
    from cloudkd.data import resolve_split
    from cloudkd.data.folds import split_by_fold

    ws, folds = teacher_ws["ws"], teacher_ws["folds"]
    splits = json.loads((ws.preprocessed / "Dataset501_OnCloudN" / "splits_final.json").read_text())
    idx = load_index(resolve_split(teacher_ws["data"]))
    for k in range(3):
        train, val = split_by_fold(idx, folds, k)
        assert sorted(splits[k]["val"]) == sorted(val["chip_id"]) and sorted(splits[k]["train"]) == sorted(
            train["chip_id"])


def test_distill_defaults_to_the_teacher_fold_of_the_students_validation_fold(teacher_ws, fake_nnunet, tmp_path,
                                                                               capsys):
    built, events = fake_nnunet
    code, text = invoke(_distill_args(teacher_ws, tmp_path / "s", "--val-fold", 1), capsys)
    assert code == 0, text
    assert [t.folds for t in built] == [[1]]  # not every trained fold: folds 0 and 2 saw fold 1's labels
    info = json.loads((tmp_path / "s" / "student.json").read_text())
    assert info["teacher"] == {"nnunet": str(teacher_ws["ws"].root), "folds": [1], "leak": None}
    assert info["config"]["teacher_folds"] is None and info["config"]["allow_teacher_leak"] is False


def test_distill_refuses_teacher_folds_that_saw_the_validation_labels(teacher_ws, fake_nnunet, tmp_path, capsys):
    built, _ = fake_nnunet
    before = snapshot(tmp_path)
    code, text = invoke(_distill_args(teacher_ws, tmp_path / "s", "--val-fold", 1, "--teacher-folds", "1,2"), capsys)
    assert code == 2 and "Traceback" not in text, text
    assert "teacher fold 2 was trained on" in text and "--allow-teacher-leak" in text
    assert "distil from teacher fold 1" in text
    assert "teacher fold 1 was" not in text
    assert snapshot(tmp_path) == before and not built  # nothing written, nothing loaded
    code, text = invoke(_distill_args(teacher_ws, tmp_path / "s", "--val-fold", 1, "--teacher-folds", "x"), capsys)
    assert code == 2 and "--teacher-folds" in text


def test_distill_with_the_override_warns_and_records_the_leak(teacher_ws, fake_nnunet, tmp_path, capsys):
    built, _ = fake_nnunet
    with pytest.warns(UserWarning, match="teacher fold 0 was trained on"):
        code, text = invoke(_distill_args(teacher_ws, tmp_path / "s", "--val-fold", 1, "--teacher-folds", "0,1",
                                          "--allow-teacher-leak"), capsys)
    assert code == 0, text
    assert [t.folds for t in built] == [[0, 1]]
    info = json.loads((tmp_path / "s" / "student.json").read_text())
    assert info["teacher"]["folds"] == [0, 1] and len(info["teacher"]["leak"]) == 1
    assert "teacher fold 0 was trained on" in info["teacher"]["leak"][0]
    assert info["config"]["teacher_folds"] == [0, 1] and info["config"]["allow_teacher_leak"] is True


def test_distill_says_to_train_the_validation_fold_of_the_teacher_first(teacher_ws, fake_nnunet, tmp_path,
                                                                         capsys):
    ws = teacher_ws["ws"]
    record = json.loads(ws.teacher_json.read_text())
    try:
        ws.teacher_json.write_text(json.dumps({**record, "folds": [0]}))
        code, text = invoke(_distill_args(teacher_ws, tmp_path / "s", "--val-fold", 2), capsys)
    finally:
        ws.teacher_json.write_text(json.dumps(record))
    assert code == 2 and "Traceback" not in text, text
    assert "train teacher fold 2 first" in text and not (tmp_path / "s").exists()


def test_teacher_rule_distils_the_teachers_logits_centred_on_its_recorded_threshold(teacher_ws, fake_nnunet,
                                                                                     tmp_path, capsys, monkeypatch):
    """--teacher-rule: the student learns the online nnU-Net teacher's logits less logit(t), t the threshold
    `teacher fit-threshold` recorded for the folds it distils from (so the teacher's decision sits at 0.5), and
    student.json records t. Without a fit of those folds: one line naming the command, nothing written or
    loaded. Without an nnU-Net teacher: refused."""
    import cloudkd.student.module as module

    built, _ = fake_nnunet
    seen = []
    cap = module.cap_logits
    monkeypatch.setattr(module, "cap_logits", lambda z: seen.append(z.detach().clone()) or cap(z))
    ws = teacher_ws["ws"]
    record = json.loads(ws.teacher_json.read_text())
    before = snapshot(tmp_path)
    try:
        # fold 0's fit does not carry over to fold 1, the student's validation fold
        ws.teacher_json.write_text(json.dumps({**record, "threshold": {"threshold": 0.3, "fold": 0, "n_chips": 5}}))
        code, text = invoke(_distill_args(teacher_ws, tmp_path / "s", "--val-fold", 1, "--teacher-rule"), capsys)
        assert code == 2 and "Traceback" not in text, text
        assert "cloudkd teacher fit-threshold" in text and "--fold 1" in text
        assert snapshot(tmp_path) == before and not built
        ws.teacher_json.write_text(json.dumps({**record, "threshold": {"threshold": 0.3, "fold": 1, "n_chips": 5}}))
        for flag, want in (("--teacher-rule", 1.0 - np.log(0.3 / 0.7)), ("--teacher-raw", 1.0)):
            seen.clear()
            out = tmp_path / flag.strip("-")
            code, text = invoke(_distill_args(teacher_ws, out, "--val-fold", 1, flag), capsys)
            assert code == 0, text
            assert seen and all(torch.allclose(z, torch.full_like(z, want)) for z in seen)  # the fake says 1.0
            info = json.loads((out / "student.json").read_text())
            assert info["config"]["teacher_rule"] is (flag == "--teacher-rule")
            assert info["teacher"].get("rule_threshold") == (0.3 if flag == "--teacher-rule" else None)
    finally:
        ws.teacher_json.write_text(json.dumps(record))
    code, text = invoke(["student", "train", teacher_ws["data"], "--out", tmp_path / "t", "--folds",
                         teacher_ws["folds_csv"], "--model", "unet-xs", "--epochs", 1, "--teacher-rule"], capsys)
    assert code == 2 and "Traceback" not in text and "--teacher-nnunet" in text and not (tmp_path / "t").exists()


def test_a_teacher_prepared_from_other_folds_is_refused_even_on_the_same_fold_number(teacher_ws):
    """The check reads the teacher's own splits: if its fold 1 trained on the student's validation chips (the
    two were split differently), fold number 1 does not make it safe."""
    from cloudkd.common.errors import DataError
    from cloudkd.student.teachers import nnunet_teacher_folds

    splits = json.loads((teacher_ws["ws"].preprocessed / "Dataset501_OnCloudN" / "splits_final.json").read_text())
    assert nnunet_teacher_folds(teacher_ws["ws"].root, 1, splits[1]["val"]) == ([1], [])
    other_val = splits[0]["val"]  # the student validates on what teacher fold 1 trained on
    with pytest.raises(DataError, match=r"teacher fold 1 was trained on \d+ of .*the teacher's folds differ"):
        nnunet_teacher_folds(teacher_ws["ws"].root, 1, other_val)


def test_online_teacher_is_built_on_the_modules_device_when_fitting_starts(teacher_ws, fake_nnunet, tmp_path):
    """fit() loads no teacher before the Trainer exists; the module builds it in on_fit_start on its own device
    (under DDP cuda:LOCAL_RANK, here the CPU), runs it there, and never saves it in a checkpoint."""
    from cloudkd.student.module import StudentModule
    from cloudkd.student.train import TrainConfig, fit

    built, events = fake_nnunet
    fit(TrainConfig(data=str(teacher_ws["data"]), out=str(tmp_path / "s"), model="unet-xs",
                    folds=str(teacher_ws["folds_csv"]), epochs=1, limit_train_batches=2, batch_size=2, crop=32,
                    kd_weight=1.0, teacher_nnunet=str(teacher_ws["ws"].root), accelerator="cpu", progress=False))
    assert events == ["trainer", ("teacher", torch.device("cpu"))]
    assert built[0].inputs == [torch.device("cpu")] * 2  # it taught both steps
    ck = torch.load(tmp_path / "s" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in ck["state_dict"] if not k.startswith("model.")]

    # the device is the module's own at that time, whatever it is (a module on the meta device here)
    asked = []
    m = StudentModule("unet-xs", kd_weight=1.0, teacher_mode="online")
    m.teacher_from(lambda device: asked.append(device) or FakeTeacher(None, None, device))
    assert not asked  # nothing built before fitting starts
    m.to("meta")
    m.on_fit_start()
    assert asked == [torch.device("meta")] and m.teacher.device == torch.device("meta")
    assert "teacher" not in dict(m.named_children()) and not any(k.startswith("teacher") for k in m.state_dict())


# ------------------------------------------------------------------------------- 4. --resume refuses changes
def _train_args(data, out, *extra):
    return ["student", "train", data, "--out", out, "--model", "unet-xs", "--epochs", 1, "--steps", 1, "--batch", 2,
            "--crop", 32, "--lr", 0.005, "--accelerator", "cpu", *extra]


@pytest.fixture(scope="module")
def started_run(small_data, tmp_path_factory):
    """One finished 1-epoch run (read-only for the tests: each copies it)."""
    import sys
    from unittest import mock

    from cloudkd.cli import main

    run = tmp_path_factory.mktemp("resume") / "run"
    with mock.patch.object(sys, "argv", ["cloudkd", *map(str, _train_args(small_data, run))]):
        with pytest.raises(SystemExit) as e:
            main()
    assert e.value.code == 0
    return run


@pytest.fixture
def run_copy(started_run, tmp_path):
    import shutil

    return Path(shutil.copytree(started_run, tmp_path / "run"))


def test_a_run_records_what_it_trains(started_run, small_data):
    rec = json.loads((started_run / "run.json").read_text())
    ident = rec["identity"]
    assert ident["data"] == str(small_data.resolve()) and ident["model"] == "unet-xs" and ident["lr"] == 0.005
    assert ident["batch_size"] == 2 and ident["crop"] == 32 and ident["val_fold"] == 0 and ident["seed"] == 0
    assert ident["train_chips"]["n"] + ident["val_chips"]["n"] == 30
    assert "epochs" not in ident and rec["config"]["epochs"] == 1


@pytest.mark.parametrize("change,field,shown", [
    (("--lr", 0.001), "--lr", "0.005 -> 0.001"),
    (("--batch", 4), "--batch", "2 -> 4"),
    (("--crop", 64), "--crop", "32 -> 64"),
    (("--model", "unet-s"), "--model", "'unet-xs' -> 'unet-s'"),
    (("--val-fold", 1), "--val-fold", "0 -> 1"),
    (("--threshold", 0.6), "--threshold", "0.5 -> 0.6"),
    (("--seed", 3), "--seed", "0 -> 3"),
    (("--precision", "bf16-mixed"), "--precision", "'32-true' -> 'bf16-mixed'"),
])
def test_resume_refuses_a_changed_setting_and_writes_nothing(small_data, run_copy, capsys, change, field, shown):
    before = snapshot(run_copy)
    args = _train_args(small_data, run_copy, "--resume", "--epochs", 2)
    i = args.index(change[0]) if change[0] in args else None
    if i is None:
        args += list(change)
    else:
        args[i + 1] = change[1]
    code, text = invoke(args, capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"{field} {shown}" in text and "--epochs" in text  # named, old -> new; says what may change
    assert snapshot(run_copy) == before


def test_resume_refuses_another_dataset(small_data, run_copy, tmp_path, capsys):
    import shutil

    other = Path(shutil.copytree(small_data, tmp_path / "other"))
    before = snapshot(run_copy)
    code, text = invoke(_train_args(other, run_copy, "--resume", "--epochs", 2), capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"DATA '{small_data.resolve()}' -> '{other.resolve()}'" in text
    assert snapshot(run_copy) == before


def test_resume_with_more_epochs_and_other_runtime_settings_continues(small_data, run_copy, capsys):
    # the same data through another spelling of its path, more epochs, another worker count
    code, text = invoke(_train_args(Path(str(small_data) + "/."), run_copy, "--resume", "--epochs", 2,
                                    "--workers", 1), capsys)
    assert code == 0, text
    ck = torch.load(run_copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1 and ck["global_step"] == 2
    # a copied run folder keeps one last.ckpt (no last-v1.ckpt beside a stale one for the next --resume)
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert json.loads((run_copy / "run.json").read_text())["config"]["epochs"] == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_resume_from_a_damaged_checkpoint_says_so_in_one_line(small_data, run_copy, capsys, content):
    (run_copy / "checkpoints" / "last.ckpt").write_bytes(content)
    before = snapshot(run_copy)
    code, text = invoke(_train_args(small_data, run_copy, "--resume", "--epochs", 2), capsys)
    assert code == 2 and "Traceback" not in text, text
    assert "last.ckpt: not a readable checkpoint" in text and len(text.strip().splitlines()) == 1
    assert snapshot(run_copy) == before


def test_resume_without_a_record_of_the_run_is_refused(small_data, run_copy, capsys):
    (run_copy / "run.json").unlink()
    code, text = invoke(_train_args(small_data, run_copy, "--resume", "--epochs", 2), capsys)
    assert code == 2 and "run.json is missing" in text and "--force" in text, text


def test_an_interrupted_run_says_resume_not_not_a_run_folder(small_data, run_copy, tmp_path, capsys):
    for name in ("student.pt", "student.json"):  # what an interrupted run lacks: it stops before exporting
        (run_copy / name).unlink()
    code, text = invoke(_train_args(small_data, run_copy), capsys)
    assert code == 2 and "interrupted: " in text and "--resume" in text and "--force" in text, text
    code, text = invoke(["student", "predict", "--model", run_copy, "--features", small_data / "test_features",
                         "--out", tmp_path / "masks"], capsys)
    assert code == 2 and "interrupted: " in text and "--resume" in text and "not a student run folder" not in text


def test_a_run_killed_while_exporting_says_resume_and_resume_finishes_it(small_data, run_copy, tmp_path, capsys):
    """Issue 29: a run killed after its checkpoints (and even student.pt) but before student.json, the record a run
    writes last, was called "not a student run folder"; and one without last.ckpt was told to --resume."""
    (run_copy / "student.json").unlink()  # killed while exporting: student.pt written, the record not
    predict = ["student", "predict", "--model", run_copy, "--features", small_data / "test_features", "--out",
               tmp_path / "masks"]
    code, text = invoke(predict, capsys)
    one_line_refusal(code, text, f"{run_copy}: interrupted: its training did not finish")
    assert "--resume" in text and "not a student run folder" not in text
    code, text = invoke(_train_args(small_data, run_copy), capsys)
    one_line_refusal(code, text, "interrupted: ")
    assert "--resume" in text
    code, text = invoke(_train_args(small_data, run_copy, "--resume"), capsys)  # the advice works
    assert code == 0, text
    assert (run_copy / "student.json").is_file()
    assert invoke(predict, capsys)[0] == 0
    # killed before a last.ckpt was written: nothing to resume, so the advice is --force
    (run_copy / "student.json").unlink()
    (run_copy / "checkpoints" / "last.ckpt").unlink()
    code, text = invoke(predict + ["--force"], capsys)
    one_line_refusal(code, text, "left no")
    assert "--resume" not in text and "--force" in text


# ---------------------------------------------------------------------------------------- 5. --precision
def test_a_bf16_mixed_run_trains_on_a_cpu_records_it_and_resumes_only_with_it(small_data, tmp_path, capsys,
                                                                               monkeypatch):
    from cloudkd.student.module import StudentModule

    computed = set()  # the dtype of the student's logits in training steps
    forward = StudentModule.forward

    def recording(self, x):
        z = forward(self, x)
        if self.training:
            computed.add(z.dtype)
        return z

    monkeypatch.setattr(StudentModule, "forward", recording)
    run = tmp_path / "run"
    code, text = invoke(_train_args(small_data, run, "--precision", "bf16-mixed"), capsys)
    assert code == 0, text
    assert computed == {torch.bfloat16}  # autocast to bfloat16 (float32 at the default 32-true)
    state = torch.load(run / "student.pt", map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}  # mixed: float32 weights
    assert json.loads((run / "student.json").read_text())["config"]["precision"] == "bf16-mixed"
    assert json.loads((run / "run.json").read_text())["identity"]["precision"] == "bf16-mixed"
    before = snapshot(run)
    code, text = invoke(_train_args(small_data, run, "--resume", "--epochs", 2, "--precision", "32"), capsys)
    one_line_refusal(code, text, "--precision 'bf16-mixed' -> '32-true'")
    assert snapshot(run) == before
    code, text = invoke(_train_args(small_data, run, "--resume", "--epochs", 2, "--precision", "bf16"), capsys)
    assert code == 0, text  # Lightning's alias of bf16-mixed is the same precision
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2


@pytest.mark.parametrize("command,value", [("train", "bf16-true"), ("train", "8"), ("train", "half"),
                                           ("train", "transformer-engine"), ("distill", "nan")])
def test_a_precision_the_students_do_not_train_in_is_refused_in_one_line(small_data, tmp_path, capsys, command,
                                                                         value):
    args = _train_args(small_data, tmp_path / "run", "--precision", value)
    args[1] = command
    code, text = invoke(args, capsys)
    one_line_refusal(code, text, f"Invalid value for '--precision': {value!r} is not a training precision")
    assert "bf16-mixed (or bf16; recommended on a GPU)" in text
    assert not (tmp_path / "run").exists()


def test_a_run_recorded_before_precision_existed_was_trained_at_32_true(small_data, run_copy, capsys):
    path = run_copy / "run.json"
    rec = json.loads(path.read_text())
    del rec["identity"]["precision"]
    path.write_text(json.dumps(rec))
    code, text = invoke(_train_args(small_data, run_copy, "--resume", "--epochs", 2, "--precision", "bf16-mixed"),
                        capsys)
    one_line_refusal(code, text, "--precision '32-true' -> 'bf16-mixed'")
    code, text = invoke(_train_args(small_data, run_copy, "--resume", "--epochs", 2), capsys)
    assert code == 0, text


# ------------------------------------------------------------------- 6. last.ckpt after every epoch
def test_last_checkpoint_is_the_last_epoch_even_when_validation_stops_improving(small_data, tmp_path):
    """--resume continues from last.ckpt: it must hold the last finished epoch. Lightning's save_last alone rewrites
    it only in epochs that saved a new best, so with a learning rate of 0 (the validation score never improves
    after the first epoch) last.ckpt stayed at epoch 0."""
    import torch

    from cloudkd.student.train import TrainConfig, fit

    run = tmp_path / "run"
    fit(TrainConfig(data=str(small_data), out=str(run), model="unet-xs", epochs=3, batch_size=2, crop=32, lr=0.0,
                    limit_train_batches=1, accelerator="cpu", progress=False))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and best["epoch"] == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
