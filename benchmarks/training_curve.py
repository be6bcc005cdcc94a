"""Jaccard against training time: the nnU-Net teacher (one recipe of ``teacher_ablation.py``) and the labels-only
student unet-s, each trained at several budgets on the demo's fold 0, scored on the held-out test split.

    python benchmarks/training_curve.py --demo runs/demo --data data/generated/demo \
        --teacher-row adamw --teacher-epochs 8 16 32 64 --student-epochs 10 20 40 80 [--seeds 0]

Every point is a full run at its budget (its own learning-rate schedule), not a checkpoint of a longer run. The
teacher's points train in workspaces under DEMO/teacher_ablation (``teacher_ablation.run_teacher``: the demo budget
with the row's changes and the epochs); the student's under DEMO/training_curve, with the demo student's budget
(``cloudkd.demo.StudentBudget``) but labels only and the epochs. Rows are written to the CSV as each run finishes
and rows already there are skipped. The figure (``--png``) shows both curves (mean over seeds) against the
training seconds, with the label ceiling of ``benchmarks/results/label_ceiling.csv`` when present.
"""

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from _results import write_rows
from distill_compare import fit_and_score
from teacher_ablation import ROWS, run_teacher
from cloudkd.common.cli import format_table
from cloudkd.common.viz import save_figure
from cloudkd.data import resolve_split
from cloudkd.demo import StudentBudget
from cloudkd.student.train import TrainConfig
from cloudkd.teacher.workspace import DEFAULT_DATASET_ID, Workspace

COLUMNS = ["model", "recipe", "epochs", "seed", "params", "train_s", "test_jaccard", "precision", "recall",
           "real_jaccard"]


def plot(rows, ceiling_csv: Path, png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (model, recipe), colour in zip(dict.fromkeys((r["model"], r["recipe"]) for r in rows), ("tab:red", "tab:blue",
                                                                                                "tab:green")):
        pts = {}
        for r in rows:
            if (r["model"], r["recipe"]) == (model, recipe):
                pts.setdefault(int(r["epochs"]), []).append((float(r["train_s"]), float(r["test_jaccard"])))
        ep = sorted(pts)
        x = [np.mean([p[0] for p in pts[e]]) for e in ep]
        y = [np.mean([p[1] for p in pts[e]]) for e in ep]
        sd = [np.std([p[1] for p in pts[e]], ddof=1) if len(pts[e]) > 1 else 0.0 for e in ep]
        n = sorted({len(pts[e]) for e in ep})
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        ax.errorbar(x, y, yerr=sd, fmt="o-", color=colour, capsize=3,
                    label=f"{model} ({recipe}), mean ± sd of {seeds} seed(s)")
        for e, xi, yi in zip(ep, x, y):
            ax.annotate(f"{e} ep", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log")
    if ceiling_csv.is_file():
        for r in csv.DictReader(ceiling_csv.open()):
            if r["name"] in ("two_annotators", "oracle_median_margin"):
                ax.axhline(float(r["jaccard"]), color="grey", ls="--", lw=1)
                # x in axes coordinates (the left edge), y in data: the label stays inside the axes at any scale
                ax.text(0.01, float(r["jaccard"]) + 0.003, r["name"].replace("_", " "), fontsize=8, color="grey",
                        transform=ax.get_yaxis_transform())
    ax.set_xlabel("training seconds on this machine (log)")
    ax.set_ylabel("global Jaccard, held-out generated test split")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.76), fontsize=8)  # under the ceiling lines
    fig.tight_layout()
    return save_figure(fig, png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--real", default="../shared/data/real_labelled", help="labelled real chips (skipped if absent)")
    ap.add_argument("--teacher-row", default="base", choices=[k for k, v in ROWS.items() if not v[2]])
    ap.add_argument("--teacher-epochs", nargs="*", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--student-epochs", nargs="*", type=int, default=[10, 20, 40, 80])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="benchmarks/results/training_curve.csv")
    ap.add_argument("--png", default="docs/training_curve.png")
    a = ap.parse_args()
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    out = Path(a.out)
    rows = list(csv.DictReader(out.open())) if out.is_file() else []
    done = {(r["model"], r["recipe"], int(r["epochs"]), int(r["seed"])) for r in rows}
    demo = Path(a.demo)
    test = resolve_split(a.data, "test")
    real = resolve_split(a.real, "train") if Path(a.real).is_dir() else None
    demo_ws = Workspace(demo / "nnunet")
    sb = StudentBudget()
    runs = [("nnU-Net", a.teacher_row, e) for e in a.teacher_epochs] + [("unet-s", "labels", e)
                                                                        for e in a.student_epochs]
    for seed in a.seeds:
        for model, recipe, epochs in sorted(runs, key=lambda r: r[2]):  # the short runs of both first
            if (model, recipe, epochs, seed) in done:
                continue
            if model == "nnU-Net":
                if not (demo_ws.preprocessed / demo_ws.dataset_name(DEFAULT_DATASET_ID)).is_dir():
                    raise SystemExit(f"{demo_ws.preprocessed}: no preprocessed demo data; run make demo first")
                r = run_teacher({**ROWS[recipe][1], "epochs": epochs}, {}, seed, demo_ws, demo / "teacher_ablation",
                                test, real)
            else:
                cfg = TrainConfig(data=a.data, out=str(demo / "training_curve" / f"unet-s_e{epochs}_s{seed}"),
                                  model="unet-s", folds=str(demo / "folds.csv"), epochs=epochs, batch_size=sb.batch,
                                  crop=sb.crop, lr=sb.lr, label_weight=1.0, kd_weight=0.0,
                                  limit_train_batches=sb.steps, seed=seed, progress=False)
                r = fit_and_score(cfg, test, real)
            row = {"model": model, "recipe": recipe, "epochs": epochs, "seed": seed, "params": r["params"],
                   "train_s": r["train_s"], "test_jaccard": r["test_jaccard"],
                   "precision": r.get("precision", r.get("test_precision")),
                   "recall": r.get("recall", r.get("test_recall")), "real_jaccard": r.get("real_jaccard")}
            rows.append(row)
            write_rows(out, rows, COLUMNS)
            print(format_table([row], COLUMNS), flush=True)
    print(format_table(rows, COLUMNS))
    print(plot(rows, Path(a.out).with_name("label_ceiling.csv"), a.png))


if __name__ == "__main__":
    main()
