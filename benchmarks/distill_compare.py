"""Does distillation help? The same student at the same budget, trained on labels only and distilled from the
nnU-Net teacher (online pixel KD, online CWD, offline pixel KD), over several truly seeded runs, scored on the
held-out generated test split with the leaderboard metric.

    python benchmarks/distill_compare.py --demo runs/demo --data data/generated/demo \
        --teacher runs/demo/nnunet --seeds 0 1 2 [--runs labels online_pixel online_cwd offline] [--epochs 10]

Every run trains unet-s on the fold-0 training chips of the demo (``DEMO/folds.csv``) with the demo's student
budget (``cloudkd.demo.StudentBudget``: epochs, batch, crop, learning rate, T, KD weight), selects its best
epoch on the fold-0 validation locations and is scored on the test split (other locations). ``--seed`` seeds
initialisation, data order and augmentation. Both modes distil from teacher fold 0, the only fold that has not
seen the fold-0 validation labels (online: ``fit``'s default, the student's validation fold); the offline run
reads that fold's soft labels of the training chips from ``TEACHER/soft_train_fold0`` (written on the first use).
Teacher logits are capped alike in both modes (``cloudkd.student.distill.LOGIT_CAP``).

Writes (a finished run+seed already in the CSV is reused):

* ``--csv`` (default ``benchmarks/results/distill_seeds.csv``): one row per run and seed, columns ``run, seed,
  params, teacher_test_jaccard, val_jaccard, test_jaccard, train_s``;
* the same name with ``.md``: mean ± sd per run, and ``--png`` (default ``docs/distill_seeds.png``): a chart of it;
* with ``--real`` (default ``../shared/data/real_labelled`` when present): every student also scored on those
  labelled real chips, ``distill_seeds_real.csv`` beside the CSV (``run, seed, real_jaccard, precision, recall``)
  and a column in the ``.md``.

Optional runs: ``resnet34`` (the smp U-Net/ResNet-34 benchmark model, labels only); ``online_cwd_s2d2`` and
``online_cwd_s2d4``, ``online_cwd_s2d2r``, the on-board candidates (space-to-depth stems) with the demo student's recipe, which
``benchmarks/student_candidates.py --seeds-csv`` puts on its Pareto front:

    python benchmarks/distill_compare.py --runs online_cwd online_cwd_s2d2 online_cwd_s2d4 --seeds 0 1 2 \
        --csv benchmarks/results/student_candidates_seeds.csv --png docs/student_candidates_seeds.png
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from _results import write_rows
from cloudkd.data import load_index, resolve_split
from cloudkd.data.folds import read_folds, split_by_fold
from cloudkd.common.cli import format_table
from cloudkd.demo import StudentBudget
from cloudkd.student.predict import predict_folder
from cloudkd.evaluate.scoring import score_folder
from cloudkd.student.train import TrainConfig, fit
from cloudkd.student.runs import load_student
from cloudkd.teacher.model import NnUNetTeacher, predict_folder as teacher_predict
from cloudkd.teacher.workspace import Workspace
from cloudkd.common.viz import save_figure

RUNS = {
    "labels": dict(model="unet-s", kd_weight=0.0),
    "online_pixel": dict(model="unet-s", online=True, kd="pixel"),
    "online_cwd": dict(model="unet-s", online=True, kd="cwd"),
    "offline": dict(model="unet-s", soft=True, kd="pixel"),
    "resnet34": dict(model="smp:Unet:resnet34", kd_weight=0.0),
    # the on-board candidates of issue 18 with the demo student's recipe (online CWD from the teacher)
    "online_cwd_s2d2": dict(model="unet-s2d2", online=True, kd="cwd"),
    "online_cwd_s2d4": dict(model="unet-s2d4", online=True, kd="cwd"),
    "online_cwd_s2d2r": dict(model="unet-s2d2r", online=True, kd="cwd"),
}
COLUMNS = ["run", "seed", "params", "teacher_test_jaccard", "val_jaccard", "test_jaccard", "train_s"]


def teacher_test_jaccard(ws: Workspace, test, out: Path) -> float:
    score_file = out / "teacher_test_jaccard.txt"
    if not score_file.is_file():
        teacher = NnUNetTeacher.from_workspace(ws)
        teacher_predict(teacher, test.features_dir, out / "teacher_test_pred", None, progress=False)
        score_file.write_text(str(score_folder(out / "teacher_test_pred", test.labels_dir).jaccard))
    return float(score_file.read_text())


def soft_labels(ws: Workspace, data: str, folds: Path, val_fold: int = 0) -> Path:
    """Soft labels of the training chips of ``val_fold`` by teacher fold ``val_fold`` alone (the other teacher
    folds were trained on the validation chips, whose labels they would pass on)."""
    soft = ws.root / f"soft_train_fold{val_fold}"
    split = resolve_split(data, "train")
    idx = load_index(split)
    train_ids = list(split_by_fold(idx, read_folds(folds), val_fold)[0]["chip_id"])
    todo = [c for c in train_ids if not (soft / f"{c}.tif").is_file()]
    if todo:
        teacher_predict(NnUNetTeacher.from_workspace(ws, folds=[val_fold]), split.features_dir, None, soft,
                        chip_ids=todo, progress=False)
    return soft


def fit_and_score(cfg: TrainConfig, test, real=None) -> dict:
    """Train the student ``cfg`` describes, then score its best epoch on the ``test`` split (and on the ``real``
    split when given): params, train_s, val_jaccard, test (and real) Jaccard, precision and recall."""
    run_dir = Path(cfg.out)
    t0 = time.perf_counter()
    r = fit(cfg)
    row = {"params": r.params, "train_s": round(time.perf_counter() - t0), "val_jaccard": round(r.val_jaccard, 4)}
    for prefix, split in (("test", test), ("real", real)):
        if split is None:
            continue
        predict_folder(load_student(run_dir), split.features_dir, run_dir / f"{prefix}_pred", progress=False)
        rep = score_folder(run_dir / f"{prefix}_pred", split.labels_dir)
        row.update({f"{prefix}_jaccard": round(rep.jaccard, 4), f"{prefix}_precision": round(rep.total.precision, 4),
                    f"{prefix}_recall": round(rep.total.recall, 4)})
    return row


def summarise(rows):
    out = []
    for run in dict.fromkeys(r["run"] for r in rows):
        v = np.array([float(r["test_jaccard"]) for r in rows if r["run"] == run])
        val = np.array([float(r["val_jaccard"]) for r in rows if r["run"] == run])
        secs = np.array([float(r["train_s"]) for r in rows if r["run"] == run])
        out.append({"run": run, "seeds": len(v), "params": int(next(r["params"] for r in rows if r["run"] == run)),
                    "test_jaccard_mean": round(v.mean(), 4), "test_jaccard_sd": round(v.std(ddof=1), 4)
                    if len(v) > 1 else None, "val_jaccard_mean": round(val.mean(), 4),
                    "train_s_mean": round(secs.mean())})
    return out


def main():
    sb = StudentBudget()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--teacher", default=None, help="nnU-Net workdir of the teacher (default DEMO/nnunet)")
    ap.add_argument("--runs", nargs="+", default=["labels", "online_pixel", "online_cwd", "offline"],
                    choices=list(RUNS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=sb.epochs)
    ap.add_argument("--steps", type=int, default=sb.steps, help="steps per epoch (default: one pass)")
    ap.add_argument("--batch", type=int, default=sb.batch)
    ap.add_argument("--kd-weight", type=float, default=sb.kd_weight)
    ap.add_argument("--temperature", type=float, default=sb.temperature)
    ap.add_argument("--lr", type=float, default=sb.lr)
    ap.add_argument("--csv", default="benchmarks/results/distill_seeds.csv")
    ap.add_argument("--png", default="docs/distill_seeds.png")
    ap.add_argument("--real", default="../shared/data/real_labelled", help="labelled real chips ('' to skip)")
    a = ap.parse_args()
    demo = Path(a.demo)
    folds = demo / "folds.csv"
    ws = Workspace(a.teacher or demo / "nnunet")
    out_root = ws.root / "distill_study"
    out_root.mkdir(parents=True, exist_ok=True)
    test = resolve_split(a.data, "test")
    t_jac = teacher_test_jaccard(ws, test, out_root)
    print(f"teacher {ws.root}: test Jaccard {t_jac:.4f}", flush=True)
    csv_path = Path(a.csv)
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    real = resolve_split(a.real, "train") if a.real and Path(a.real).is_dir() else None
    real_csv = csv_path.with_name(csv_path.stem + "_real.csv")
    real_rows = list(csv.DictReader(real_csv.open())) if real is not None and real_csv.is_file() else []
    done = {(r["run"], int(r["seed"])) for r in rows}
    for seed in a.seeds:
        for name in a.runs:
            if (name, seed) in done:
                continue
            spec = RUNS[name]
            kd_weight = spec.get("kd_weight", a.kd_weight)
            run_dir = out_root / f"{name}_s{seed}"
            cfg = TrainConfig(data=a.data, out=str(run_dir), model=spec["model"], folds=str(folds),
                              epochs=a.epochs, batch_size=a.batch, crop=sb.crop, lr=a.lr, label_weight=1.0,
                              kd_weight=kd_weight, kd=spec.get("kd", "pixel"), temperature=a.temperature,
                              soft_dir=str(soft_labels(ws, a.data, folds)) if spec.get("soft") else None,
                              teacher_nnunet=str(ws.root) if spec.get("online") else None,
                              limit_train_batches=a.steps, seed=seed, progress=False)
            r = fit_and_score(cfg, test, real)
            rows.append({"run": name, "seed": seed, "params": r["params"], "teacher_test_jaccard": round(t_jac, 4),
                         "val_jaccard": r["val_jaccard"], "test_jaccard": r["test_jaccard"],
                         "train_s": r["train_s"]})
            write_rows(csv_path, rows, COLUMNS)
            if real is not None:
                real_rows.append({"run": name, "seed": seed, "real_jaccard": r["real_jaccard"],
                                  "precision": r["real_precision"], "recall": r["real_recall"]})
                write_rows(real_csv, real_rows)
            print(format_table(rows[-1:], COLUMNS), flush=True)
    summary = summarise(rows)
    for srow in summary:
        v = np.array([float(r["real_jaccard"]) for r in real_rows if r["run"] == srow["run"]])
        if len(v):
            srow["real_jaccard_mean"] = round(v.mean(), 4)
            srow["real_jaccard_sd"] = round(v.std(ddof=1), 4) if len(v) > 1 else None
    cols = list(dict.fromkeys(k for srow in summary for k in srow))
    md = format_table([{k: srow.get(k) for k in cols} for srow in summary], cols)
    print(md)
    csv_path.with_suffix(".md").write_text(
        f"Teacher: {ws.root} (test Jaccard {t_jac:.4f}); student budget: {a.epochs} epochs, batch {a.batch}, "
        f"crop {sb.crop}, lr {a.lr}, KD weight {a.kd_weight}, T {a.temperature}.\n\n{md}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(summary) + 1.6))
    names = [s["run"] for s in summary]
    means = [s["test_jaccard_mean"] for s in summary]
    sds = [s["test_jaccard_sd"] or 0.0 for s in summary]
    ax.barh(names, means, xerr=sds, color="tab:blue", capsize=4)
    for i, run in enumerate(names):
        pts = [float(r["test_jaccard"]) for r in rows if r["run"] == run]
        ax.plot(pts, [i] * len(pts), "k.", ms=5)
        ax.text(max(pts) + 0.01, i, f"{means[i]:.3f} ± {sds[i]:.3f} (n={len(pts)})", va="center")
    ax.axvline(t_jac, color="tab:red", ls="--", label=f"teacher {t_jac:.3f}")
    lo = min(min(float(r["test_jaccard"]) for r in rows), t_jac)
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.set_xlabel("global Jaccard, held-out generated test split (bars: mean ± sd over seeds; dots: seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    print(save_figure(fig, a.png))


if __name__ == "__main__":
    main()
