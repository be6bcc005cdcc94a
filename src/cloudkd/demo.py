"""``make demo``: the whole story on generated data, one step after the other, reusing what is already built.

Steps: generate the benchmark -> location-grouped folds -> thresholding baseline (fitted on the train split)
-> nnU-Net teacher (prepared, planned, trained on fold 0 within a CPU budget) -> the compact student (unet-s,
<= 165 k parameters) distilled from the teacher (online by default: the teacher runs on every augmented batch;
offline: from soft labels of the training chips) -> each method predicts the held-out test split (locations
never seen in training) -> score with the leaderboard metric -> the student exported to int8 ONNX (checked against
fp32) and scored -> the student packed as submission.zip and run through the runtime emulator (main.py,
validation, score) -> one results table (method, params, bytes, ms/chip, Jaccard; CSV + JSON) and a PNG of
sample chips and masks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List, Optional

import pandas as pd

from .baselines.threshold import ThresholdModel, fit_threshold, predict_folder
from .common.io import atomic_write
from .data.chips import load_index
from .data.roots import resolve_split
from .data.folds import make_folds, write_folds
from .data.synth.sentinel2 import SynthConfig, synthesize
from .evaluate.scoring import score_folder
from .student.config import DEMO_KD, DISTILL_KD_WEIGHT, TrainConfig as C
from .teacher.plans import Budget, recipe
from .common.cli import format_table
from .data.viz import plot_chips


@dataclass
class StudentBudget:
    #: "online": the in-process teacher runs on each augmented batch (with CWD it matched labels-only training
    #: over 3 seeds, benchmarks/results/distill_seeds.md); "offline": from soft labels written by the teacher first
    teacher_mode: str = "online"
    model: str = C.model
    epochs: int = C.epochs
    steps: Optional[int] = C.limit_train_batches  # per epoch; None: one pass over the training chips
    batch: int = C.batch_size
    crop: int = C.crop
    lr: float = C.lr
    kd: str = DEMO_KD
    kd_weight: float = DISTILL_KD_WEIGHT
    temperature: float = C.temperature


@dataclass
class DemoConfig:
    workdir: str = "runs/demo"
    data: str = "data/generated/demo"
    n_train: int = 160
    n_test: int = 80
    #: more labelled train chips beyond ``n_train`` (the generator's ``n_extra_train``: the test split stays the same)
    n_extra_train: int = 0
    size: int = 512
    seed: int = 0
    difficulty: float = SynthConfig.difficulty
    folds: int = 5
    force: bool = False
    device: str = "auto"
    #: the teacher's CPU budget, the "demo" teacher recipe: a narrow nnU-Net (2.1 M parameters), about 5 minutes
    #: on 2 cores
    teacher_budget: Budget = field(default_factory=lambda: recipe("demo"))
    #: the student's budget (``cloudkd distill`` options): online KD from the teacher by default
    student: StudentBudget = field(default_factory=lambda: StudentBudget())

    def synth_config(self) -> SynthConfig:
        """The generator's config of the demo's dataset."""
        return SynthConfig(n_train=self.n_train, n_test=self.n_test, size=self.size, seed=self.seed,
                           difficulty=self.difficulty, n_extra_train=self.n_extra_train)

    @classmethod
    def quick(cls, workdir: str = "runs/demo-quick", data: str = "data/generated/demo-quick") -> "DemoConfig":
        """A short variant for tests: few small chips, a tiny teacher budget."""
        return cls(workdir=workdir, data=data, n_train=24, n_test=12, size=128, folds=3,
                   teacher_budget=replace(recipe("demo"), epochs=2, iters_per_epoch=10, val_iters=1, patch=128,
                                          batch=4, base_features=8, max_features=64),
                   student=StudentBudget(epochs=2, steps=3, batch=4, crop=128))


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _score_row(method: str, params: int, ms_chip: float, pred_dir: Path, split, work: Path, nbytes: int = None):
    """(results-table row, score report) of one method's predictions on a labelled split."""
    report = score_folder(pred_dir, split.labels_dir)
    report.write(work / "scores" / method, work / "scores" / f"{method}.json")
    return {"method": method, "params": params, "bytes": nbytes, "ms_per_chip": round(ms_chip, 1),
            "jaccard": report.jaccard, "precision": report.total.precision, "recall": report.total.recall}, report


def _student_stage(cfg: DemoConfig, work: Path, teacher, teacher_new: bool, device: str, folds_csv: Path, test_split,
                   progress: bool) -> dict:
    """The student distilled from the teacher (online, or offline from soft labels), its test-split row."""
    from .data.folds import read_folds, split_by_fold
    from .student.predict import predict_folder as student_predict
    from .student.train import TrainConfig, fit
    from .student.rule import fit_rule
    from .student.runs import RULE_KEY, load_student, recorded_rule
    from .common.sizes import count_params
    from .teacher.model import predict_folder as teacher_predict

    sb = cfg.student
    train_split = resolve_split(cfg.data, "train")
    train_ids = list(split_by_fold(load_index(train_split), read_folds(folds_csv), 0)[0]["chip_id"])
    soft_dir = work / "soft" / "train"
    online = sb.teacher_mode == "online"
    if sb.teacher_mode not in ("online", "offline"):
        raise ValueError(f"student teacher_mode must be online or offline, got {sb.teacher_mode!r}")
    rebuild = cfg.force or teacher_new  # a new teacher invalidates its soft labels and the student taught by them
    _log(f"5/7 student {sb.model}: {sb.teacher_mode} distillation from the nnU-Net teacher "
         f"({len(train_ids)} training chips of fold 0)")
    if not online:
        todo = [c for c in train_ids if rebuild or not (soft_dir / f"{c}.tif").is_file()]
        if todo:
            out = teacher_predict(teacher, train_split.features_dir, None, soft_dir, chip_ids=todo,
                                  progress=progress)
            _log(f"    soft labels: {out['n_chips']} chips, {out['ms_per_chip']:.0f} ms/chip -> {soft_dir}")
        else:
            _log(f"    soft labels: reused {soft_dir}")
    run = work / "student"
    info = run / "student.json"
    record = json.loads(info.read_text()) if info.is_file() else {}
    same = record.get("teacher_mode") == sb.teacher_mode
    rule = record.get(RULE_KEY) if isinstance(record.get(RULE_KEY), dict) else {}
    # reused only when fitted as fit_rule fits it now (threshold and dilation; records before: dilation only)
    fitted = same and not rebuild and "thresholds" in rule.get("fitted_on", {})
    if same and not rebuild:
        _log(f"    reused the trained student in {run}")
    else:
        tc = TrainConfig(data=cfg.data, out=str(run), model=sb.model, folds=str(folds_csv), epochs=sb.epochs,
                         batch_size=sb.batch, crop=sb.crop, lr=sb.lr, kd=sb.kd, kd_weight=sb.kd_weight,
                         temperature=sb.temperature, soft_dir=None if online else str(soft_dir),
                         teacher_nnunet=str(work / "nnunet") if online else None, limit_train_batches=sb.steps,
                         seed=cfg.seed, progress=progress, resume=False,
                         accelerator="gpu" if device.startswith("cuda") else "cpu")
        if run.exists():
            shutil.rmtree(run)  # a stale run (other settings) must not be resumed or mixed in
        r = fit(tc)
        _log(f"    distilled in {r.seconds:.0f} s ({r.epochs} epochs); best val global Jaccard {r.val_jaccard:.4f}")
    # the rule's threshold and dilation, learnt on the student's own (generated) validation fold; every later
    # stage applies it
    if not fitted:
        f = fit_rule(run, device=device, progress=progress)
        _log(f"    rule fitted on {f.n_chips} validation chips: threshold {f.threshold:g}, dilation {f.dilate} px; "
             f"val global Jaccard {f.before:.4f} (threshold {f.base:g}, undilated) -> {f.after:.4f}")
    threshold, dilate = recorded_rule(run)
    if fitted:
        _log(f"    rule: reused threshold {threshold:g}, dilation {dilate} px (recorded in {info})")
    model = load_student(run)
    pred = work / "predictions" / "student"
    p = student_predict(model, test_split.features_dir, pred, threshold=threshold, dilate=dilate, progress=progress)
    row, _ = _score_row(f"student {sb.model} (KD)", count_params(model), p["ms_per_chip"],
                        pred, test_split, work, (run / "student.pt").stat().st_size)
    _log(f"    student: global Jaccard {row['jaccard']:.4f}; {p['ms_per_chip']:.0f} ms/chip inference")
    return row


def _export_stage(cfg: DemoConfig, work: Path, test_split, rebuilt: bool, progress: bool) -> dict:
    """The student as int8 ONNX (calibrated on training chips, checked against fp32), scored on the test split."""
    from .common.onnx import OnnxModel
    from .onboard.export import INT8_MIN_IOU, export
    from .student.predict import predict_folder as student_predict
    from .student.runs import recorded_rule

    out = work / "export"
    student = work / "student" / "student.pt"
    record = work / "student" / "student.json"  # the rule the export records is fitted after the weights
    fresh = (out / "model_int8.onnx").is_file() and (out / "export.json").is_file() and \
        (out / "model_int8.onnx").stat().st_mtime >= max(student.stat().st_mtime, record.stat().st_mtime)
    if fresh and not (cfg.force or rebuilt):
        _log(f"6/7 export: reused {out}")
    else:
        r = export(work / "student", out, calib=resolve_split(cfg.data, "train").features_dir,
                   heldout=test_split.features_dir, n_calib=16, n_check=8, size=cfg.size, measure_memory=False,
                   force=True)  # the demo's own export (a folder cloudkd did not write is still refused)
        checks, ok = r.checks, r.int8_ok
        _log(f"6/7 export: ONNX fp32 (max abs diff vs PyTorch {checks['onnx_fp32_max_abs_diff']:.1e}) and int8 "
             f"(mask IoU vs fp32 {checks['int8_vs_fp32_mask_iou']:.4f}{'' if ok else f', BELOW {INT8_MIN_IOU}'}) -> {out}")
    q = out / "model_int8.onnx"
    pred = work / "predictions" / "student_int8"
    threshold, dilate = recorded_rule(q)
    p = student_predict(OnnxModel(q), test_split.features_dir, pred, threshold=threshold, dilate=dilate,
                        progress=progress)
    info = json.loads((work / "student" / "student.json").read_text())
    row, _ = _score_row("student int8 ONNX", info["params"], p["ms_per_chip"], pred, test_split, work,
                        q.stat().st_size)
    _log(f"    int8 student: global Jaccard {row['jaccard']:.4f}; {p['ms_per_chip']:.0f} ms/chip (ONNX Runtime)")
    return row


def _submission_stage(cfg: DemoConfig, work: Path, test_split) -> dict:
    from .submission.emulate import runtime_test
    from .submission.pack import pack

    zip_path = work / "submission.zip"
    r = pack(work / "student", zip_path, chip_size=cfg.size)
    _log(f"7/7 submission: packed {r.config['model']['name']} ({r.params:,} params) -> {zip_path} "
         f"({r.bytes / 1024:.0f} KiB); running main.py in the runtime emulator")
    v = runtime_test(zip_path, test_split.features_dir, labels=test_split.labels_dir,
                     json_out=work / "runtime_test.json", echo=False)
    if not v["ok"]:
        raise RuntimeError("runtime emulator: " + "; ".join(v["reasons"]))
    _log(f"    runtime-test passed: {v['n_chips']} masks, all valid, main.py {v['seconds']:.1f} s; "
         f"leaderboard score {v['jaccard']:.4f}")
    return {"method": "submission.zip (main.py, emulated runtime)", "params": r.params, "bytes": r.bytes,
            "ms_per_chip": round(1000 * v["seconds"] / v["n_chips"], 1), "jaccard": v["jaccard"],
            "precision": None, "recall": None}


#: the kind of content of the demo's workdir (the output policy's mark)
DEMO_KIND = "demo"


def check_workdir(work: Path, data) -> None:
    """The output policy for the demo's workdir, whose stages reuse what an earlier demo left there: it is new,
    empty, or the demo's own (its mark, or the results.json of a demo from before the mark); a folder cloudkd did
    not write (a user's project, whose ``student/`` the demo would delete) is refused even with --force, and so
    is a workdir overlapping the data folder."""
    from .common.errors import DataError
    from .common.outputs import check_folder, folder_mark, outputs_apart

    outputs_apart([work], [data])
    if folder_mark(work) is None and (work / "results.json").is_file():
        try:
            legacy = "workdir" in json.loads((work / "results.json").read_text()).get("config", {})
        except (ValueError, AttributeError):
            legacy = False
        if legacy:
            return
    if work.exists() and not work.is_dir():
        raise DataError(f"--workdir {work}: is a file, not a folder")
    check_folder(work, DEMO_KIND, True, "--workdir")


def run_demo(cfg: DemoConfig, progress: bool = True) -> List[dict]:
    from .common.sizes import state_dict_bytes
    from .teacher.model import NnUNetTeacher
    from .teacher.model import predict_folder as teacher_predict
    from .teacher.workspace import DEFAULT_DATASET_ID, Workspace, default_device
    from .teacher.plans import plan_and_preprocess
    from .teacher.convert import prepare as teacher_prepare
    from .teacher.train import train as teacher_train, trained_epochs

    work = Path(cfg.workdir)
    t_all = time.perf_counter()
    rows = []
    check_workdir(work, cfg.data)  # before anything is created

    # 1. data (first: a folder the generator did not write is refused before anything is created)
    scfg = cfg.synth_config()
    _log(f"1/7 generate {cfg.n_train + cfg.n_extra_train} train + {cfg.n_test} test chips ({cfg.size} px) in "
         f"{cfg.data}")
    res = synthesize(cfg.data, scfg, overwrite=cfg.force, progress=progress)
    from .common.outputs import mark_folder

    mark_folder(work, DEMO_KIND)
    _log("    reused the existing dataset" if res.reused else f"    generated in {res.seconds:.1f} s")
    train = load_index(resolve_split(cfg.data, "train"))
    test_split = resolve_split(cfg.data, "test")

    # 2. folds, shared by every stage
    folds = make_folds(train, k=cfg.folds, seed=cfg.seed)
    folds_csv = write_folds(folds, work / "folds.csv")
    _log(f"2/7 {cfg.folds} location-grouped folds -> {folds_csv}")

    # 3. thresholding baseline, fitted on the whole train split, applied to the held-out test split
    model_path = work / "threshold.json"
    if res.reused and model_path.is_file() and not cfg.force:
        model = ThresholdModel.load(model_path)
        _log(f"3/7 threshold: reused {model_path}")
    else:
        t0 = time.perf_counter()
        model = fit_threshold(train["features"], train["label"], progress=progress)
        model.save(model_path)
        _log(f"3/7 threshold fitted in {time.perf_counter() - t0:.1f} s: brightness > {model.brightness_min:.3f}, "
             f"whiteness < {model.whiteness_max:.3f} (train Jaccard {model.fit_jaccard:.4f}) -> {model_path}")
    pred_thr = work / "predictions" / "threshold"
    t0 = time.perf_counter()
    n = predict_folder(model, test_split.features_dir, pred_thr, progress=progress)
    row, _ = _score_row("thresholding", 2, 1000 * (time.perf_counter() - t0) / max(n, 1), pred_thr, test_split,
                        work, model_path.stat().st_size)
    rows.append(row)
    _log(f"    thresholding: global Jaccard {rows[-1]['jaccard']:.4f} on {n} test chips")

    # 4. nnU-Net teacher: prepare, plan + preprocess, train fold 0 within the CPU budget, predict the test split
    device = default_device() if cfg.device == "auto" else cfg.device
    ws = Workspace(work / "nnunet")
    _log(f"4/7 nnU-Net teacher in {ws.root} (budget {cfg.teacher_budget})")
    prep = teacher_prepare(cfg.data, ws, folds=folds, progress=progress)
    _log(f"    prepare: {prep.dataset_name} " + ("reused" if prep.reused else f"written in {prep.seconds:.0f} s"))
    timings = plan_and_preprocess(ws, DEFAULT_DATASET_ID, processes=min(2, os.cpu_count() or 1))
    if timings:
        _log("    nnU-Net " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()))
    done = trained_epochs(ws, DEFAULT_DATASET_ID, 0, cfg.teacher_budget)
    retrain = done is not None and done != cfg.teacher_budget.epochs  # the recipe changed since this workdir's run
    if retrain and not cfg.force:
        _log(f"    the trained fold 0 has {done} epochs and the recipe now has {cfg.teacher_budget.epochs}: "
             "training it again")
    tr = teacher_train(ws, DEFAULT_DATASET_ID, fold=0, budget=cfg.teacher_budget, device=device,
                       force=cfg.force or retrain)
    per_it = f", {tr.seconds_per_iteration:.2f} s/iteration" if tr.seconds_per_iteration else ""
    _log("    train: " + ("reused the trained fold 0" if tr.reused else
                             f"{tr.epochs_done} epochs in {tr.seconds:.0f} s{per_it}"))
    # the threshold of its masks, fitted on fold 0's validation chips (teacher.json); the record keeps a fit while
    # its fold is reused and drops it when the fold is trained again, so a recorded fit is this fold's
    from .teacher.model import teacher_record
    from .teacher.rule import fit_threshold as fit_teacher_threshold

    teacher = NnUNetTeacher.from_workspace(ws, folds=[0], device=device)
    fit = teacher_record(ws).get("threshold")
    if isinstance(fit, dict) and int(fit.get("fold", -1)) == 0:
        how = "reused the fit on"
    else:
        fit = fit_teacher_threshold(ws, 0, DEFAULT_DATASET_ID, teacher=teacher)
        how = "fitted on"
    teacher.threshold = fit["threshold"]
    _log(f"    threshold {fit['threshold']:g}, {how} the {fit['n_chips']} validation chips of fold 0 "
         f"(validation Jaccard {fit['val_jaccard'][format(fit['threshold'], 'g')]:.4f})")
    pred_t = work / "predictions" / "teacher"
    t0 = time.perf_counter()
    out = teacher_predict(teacher, test_split.features_dir, pred_t, work / "soft" / "test", progress=progress)
    row, report = _score_row("nnU-Net teacher", teacher.n_params,
                             1000 * (time.perf_counter() - t0) / out["n_chips"], pred_t, test_split, work,
                             state_dict_bytes(teacher.network))
    rows.append(row)
    _log(f"    teacher: global Jaccard {rows[-1]['jaccard']:.4f}; {out['ms_per_chip']:.0f} ms/chip inference")

    # 5. the student, distilled offline from the teacher's soft labels of the training chips (fold 0 trains)
    rows.append(_student_stage(cfg, work, teacher, not tr.reused, device, folds_csv, test_split, progress))

    # 6. on board: int8 ONNX export of the student, checked against fp32, scored on the test split
    rows.append(_export_stage(cfg, work, test_split, not tr.reused, progress))

    # 7. the submission: pack the student with submission/main.py, run it in the runtime emulator, score it
    rows.append(_submission_stage(cfg, work, test_split))

    sample = list(report.per_chip.sort_values("chip_id")["chip_id"][:: max(1, len(report.per_chip) // 6)][:6])
    fig = plot_chips(test_split, sample, work / "summary.png",
                     {"threshold": pred_thr, "teacher": pred_t, "student": work / "predictions" / "student"},
                     title="held-out test chips (unseen locations)")
    table = pd.DataFrame(rows)
    atomic_write(work / "results.csv", lambda t: table.to_csv(t, index=False))
    atomic_write(work / "results.json", lambda t: Path(t).write_text(json.dumps(
        {"config": asdict(cfg), "rows": rows, "seconds": round(time.perf_counter() - t_all, 1)}, indent=2)))
    print()
    print(f"Global Jaccard on the generated held-out test split ({report.n_chips} chips, "
          f"{test_split.root}, locations unseen in training):")
    print(format_table(rows, ["method", "params", "bytes", "ms_per_chip", "jaccard", "precision", "recall"]))
    print(f"\nresults: {work / 'results.csv'}   figure: {fig}   total {time.perf_counter() - t_all:.0f} s")
    return rows
