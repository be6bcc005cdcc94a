"""Does distillation help? The same student at the same budget, trained on labels only and distilled from the
nnU-Net teacher (online pixel KD, online CWD, offline pixel KD, online CWD with an unlabelled pool), over several
truly seeded runs, for each student model, scored on the held-out generated test split and on the labelled real
chips with the leaderboard metric.

    python benchmarks/distill_compare.py --demo runs/demo --data data/generated/demo --teacher runs/demo/nnunet \
        --models unet-s unet-s2d2 --seeds 0 1 2 [--runs labels online_pixel online_cwd offline pool_cwd]

Every run trains its model on the fold-0 training chips of the demo (``DEMO/folds.csv``) with the demo's student
budget (``cloudkd.demo.StudentBudget``: epochs, batch, crop, learning rate, T, KD weight), selects its best
epoch on the fold-0 validation locations and is scored on the test split (other locations). ``--seed`` seeds
initialisation, data order and augmentation. Every KD mode distils from teacher fold 0, the only fold that has not
seen the fold-0 validation labels (online: ``fit``'s default, the student's validation fold); the offline run
reads that fold's soft labels of the training chips from ``TEACHER/soft_train_fold0`` (written on the first use).
Teacher logits are capped alike in both modes (``cloudkd.student.distill.LOGIT_CAP``).

``pool_cwd`` adds the unlabelled pool ``--pool`` (the demo's dataset written again with ``cloudkd data synth ...
--n-unlabelled 640``: the same train and test chips, and 640 chips without labels at the train locations) to the
training chips: the labels' loss on the labelled ones, CWD from the teacher on all. It keeps the labels-only
run's steps per epoch, so it costs the same compute and sees the pool in place of repeated labelled chips.

Writes (a finished run + model + seed already in the CSV is reused):

* ``--csv`` (default ``benchmarks/results/distill_seeds.csv``): one row per run, model and seed, columns ``run,
  model, seed, params, teacher_test_jaccard, val_jaccard, test_jaccard, test_precision, test_recall,
  real_jaccard, real_precision, real_recall, train_s`` (real: the ``--real`` labelled chips, default
  ``../shared/data/real_labelled`` when present);
* the same name with ``.md``: mean ± sd per run and model, and ``--png`` (default ``docs/distill_seeds.png``).

Optional runs: ``online_cwd_w3`` and ``online_pixel_w3`` (the KD term weighted 3, not ``--kd-weight``'s 1);
``online_pixel_rule`` and ``online_pixel_w3_rule`` (pixel KD from the teacher's logits centred on its fitted
threshold, ``--teacher-rule``: its decision, not its raw scale);
``resnet34`` (the smp U-Net/ResNet-34 benchmark model, labels only); ``online_cwd_s2d2`` and
``online_cwd_s2d4``, ``online_cwd_s2d2r``, the on-board candidates (space-to-depth stems) with the demo student's
recipe, which ``benchmarks/student_candidates.py --seeds-csv`` puts on its Pareto front:

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
    # online CWD on the labelled chips plus the unlabelled pool (--pool), at the labels-only run's steps per epoch
    "pool_cwd": dict(model="unet-s", online=True, kd="cwd", pool=True),
    # the KD term weighted 3x against the labels' loss (the demo's weight is 1)
    "online_cwd_w3": dict(model="unet-s", online=True, kd="cwd", kd_weight=3.0),
    "online_pixel_w3": dict(model="unet-s", online=True, kd="pixel", kd_weight=3.0),
    # the same with the teacher's logits centred on its fitted threshold (--teacher-rule)
    "online_pixel_w3_rule": dict(model="unet-s", online=True, kd="pixel", kd_weight=3.0, teacher_rule=True),
    "online_pixel_rule": dict(model="unet-s", online=True, kd="pixel", teacher_rule=True),
    "resnet34": dict(model="smp:Unet:resnet34", kd_weight=0.0),
    # the on-board candidates of issue 18 with the demo student's recipe (online CWD from the teacher)
    "online_cwd_s2d2": dict(model="unet-s2d2", online=True, kd="cwd"),
    "online_cwd_s2d4": dict(model="unet-s2d4", online=True, kd="cwd"),
    "online_cwd_s2d2r": dict(model="unet-s2d2r", online=True, kd="cwd"),
}
COLUMNS = ["run", "model", "seed", "params", "teacher_test_jaccard", "val_jaccard", "test_jaccard", "test_precision",
           "test_recall", "real_jaccard", "real_precision", "real_recall", "train_s"]
#: the student models of the study (``--models``); a run whose spec names another model (resnet34, the s2d
#: candidates) keeps it
MODELS = ("unet-s", "unet-s2d2")


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


def _key(r) -> tuple:
    """A row's run and model (rows written before the model column: the run's own model)."""
    return r["run"], r.get("model") or RUNS[r["run"]]["model"]


def summarise(rows):
    out = []
    for run, model in dict.fromkeys(_key(r) for r in rows):
        mine = [r for r in rows if _key(r) == (run, model)]
        v = np.array([float(r["test_jaccard"]) for r in mine])
        val = np.array([float(r["val_jaccard"]) for r in mine])
        secs = np.array([float(r["train_s"]) for r in mine])
        real = np.array([float(r["real_jaccard"]) for r in mine if r.get("real_jaccard") not in (None, "")])
        sd = (lambda a: round(a.std(ddof=1), 4) if len(a) > 1 else None)
        out.append({"run": run, "model": model, "seeds": len(v), "params": int(mine[0]["params"]),
                    "test_jaccard_mean": round(v.mean(), 4), "test_jaccard_sd": sd(v),
                    "real_jaccard_mean": round(real.mean(), 4) if len(real) else None, "real_jaccard_sd": sd(real),
                    "val_jaccard_mean": round(val.mean(), 4), "train_s_mean": round(secs.mean())})
    return out


def labelled_steps(folds: Path, batch: int, val_fold: int = 0) -> int:
    """Steps per epoch of the labels-only run: one pass over the training chips of ``val_fold`` (last batch
    dropped), the budget a pool run keeps so that it costs the same compute."""
    n = sum(1 for r in csv.DictReader(folds.open()) if int(r["fold"]) not in (val_fold, -1))
    return max(1, n // batch)


def main():
    sb = StudentBudget()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--teacher", default=None, help="nnU-Net workdir of the teacher (default DEMO/nnunet)")
    ap.add_argument("--runs", nargs="+", default=["labels", "online_pixel", "online_cwd", "offline", "pool_cwd"],
                    choices=list(RUNS))
    ap.add_argument("--models", nargs="+", default=["unet-s"], help=f"student models (study: {' '.join(MODELS)})")
    ap.add_argument("--pool", default="data/generated/demo_pool",
                    help="unlabelled pool of the pool_* runs: a dataset root with unlabelled_features/ (cloudkd "
                         "data synth --n-unlabelled with the demo's settings) or a *_features folder")
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
    ap.add_argument("--summary", action="store_true", help="train nothing: write the summary and chart of the CSV")
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
    done = {(*_key(r), int(r["seed"])) for r in rows}
    for seed in [] if a.summary else a.seeds:
        for model in a.models:
            for name in a.runs:
                spec = RUNS[name]
                model_of_run = spec["model"] if spec["model"] not in MODELS else model
                if (name, model_of_run, seed) in done:
                    continue
                kd_weight = spec.get("kd_weight", a.kd_weight)
                tag = "" if model_of_run == spec["model"] else f"_{model_of_run}"
                run_dir = out_root / f"{name}{tag}_s{seed}"
                steps = a.steps or labelled_steps(folds, a.batch) if spec.get("pool") else a.steps
                cfg = TrainConfig(data=a.data, out=str(run_dir), model=model_of_run, folds=str(folds),
                                  epochs=a.epochs, batch_size=a.batch, crop=sb.crop, lr=a.lr, label_weight=1.0,
                                  kd_weight=kd_weight, kd=spec.get("kd", "pixel"), temperature=a.temperature,
                                  soft_dir=str(soft_labels(ws, a.data, folds)) if spec.get("soft") else None,
                                  teacher_nnunet=str(ws.root) if spec.get("online") else None,
                                  teacher_rule=spec.get("teacher_rule", False),
                                  unlabelled=a.pool if spec.get("pool") else None,
                                  limit_train_batches=steps, seed=seed, progress=False)
                r = fit_and_score(cfg, test, real)
                rows.append({"run": name, "model": model_of_run, "seed": seed, "params": r["params"],
                             "teacher_test_jaccard": round(t_jac, 4), **{k: r.get(k) for k in COLUMNS if k in r}})
                write_rows(csv_path, rows, COLUMNS)
                print(format_table(rows[-1:], COLUMNS), flush=True)
    summary = summarise(rows)
    cols = list(dict.fromkeys(k for srow in summary for k in srow))
    md = format_table([{k: srow.get(k) for k in cols} for srow in summary], cols)
    print(md)
    csv_path.with_suffix(".md").write_text(
        f"`python benchmarks/distill_compare.py --models MODEL ... --runs RUN ... --seeds SEED ...` (the rows below; "
        f"summary written {time.strftime('%Y-%m-%d')})\n\n"
        f"Teacher: {ws.root} (test Jaccard {t_jac:.4f}); student budget: {a.epochs} epochs, batch {a.batch}, "
        f"crop {sb.crop}, lr {a.lr}, KD weight {a.kd_weight}, T {a.temperature}; pool runs: the labels-only "
        f"run's steps per epoch. Real: the {a.real or 'no'} chips.\n\n{md}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(summary) + 1.6))
    names = [f"{s['run']} ({s['model']})" for s in summary]
    means = [s["test_jaccard_mean"] for s in summary]
    sds = [s["test_jaccard_sd"] or 0.0 for s in summary]
    ax.barh(names, means, xerr=sds, color=["tab:blue" if s["model"] == "unet-s" else "tab:green" for s in summary],
            capsize=4)
    for i, s_ in enumerate(summary):
        pts = [float(r["test_jaccard"]) for r in rows if _key(r) == (s_["run"], s_["model"])]
        ax.plot(pts, [i] * len(pts), "k.", ms=5)
        real_txt = f"; real {s_['real_jaccard_mean']:.3f}" if s_.get("real_jaccard_mean") is not None else ""
        ax.text(max(pts) + 0.01, i, f"{means[i]:.3f} ± {sds[i]:.3f} (n={len(pts)}){real_txt}", va="center",
                fontsize=8)
    ax.axvline(t_jac, color="tab:red", ls="--", label=f"teacher {t_jac:.3f}")
    lo = min(min(float(r["test_jaccard"]) for r in rows), t_jac)
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.set_xlabel("global Jaccard, held-out generated test split (bars: mean ± sd over seeds; dots: seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    print(save_figure(fig, a.png))


if __name__ == "__main__":
    main()
