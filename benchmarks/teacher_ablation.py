"""Why is the nnU-Net teacher weak? Its recipe varied one thing at a time at an equal, short CPU budget, each teacher
scored on the demo's held-out test split (and on the 4 labelled real chips when they are there).

    python benchmarks/teacher_ablation.py --demo runs/demo --data data/generated/demo \
        [--rows base adamw no_ds ...] [--seeds 0 1 2] [--out benchmarks/results/teacher_ablation.csv]

Every row starts from the size of ``make demo``'s teacher (the "demo" recipe: nnU-Net 2d, 8..128 features, patch
256, batch 4, BatchNorm, 8 epochs x 50 iterations, fold 0) with nnU-Net's own training recipe (SGD + poly at 0.01,
deep supervision, Dice + CE, its spatial augmentation, 33 % foreground oversampling; ``ablation_base()``) and
changes what ``ROWS`` says: training
changes (fields of ``cloudkd.teacher.plans.Budget``) and inference options (nnU-Net's mirror TTA, an ensemble of
folds, an ensemble of fold-0 teachers trained with other seeds (``members``: seed s means the mean probability of
seeds ``members*s .. members*s + members-1``), the threshold fitted on the validation fold). Rows with the same
training changes share one trained teacher. Each training runs in its own workspace
under DEMO/teacher_ablation/KEY, which links the demo workspace's nnU-Net raw and preprocessed data (``make demo``
prepares them), so nothing of the demo's own teacher is touched.

A row is written to the CSV as soon as it is scored, and rows already in the CSV (same row and seed) are skipped,
so an interrupted study loses one run. Run seeds as ``--seeds 0 1 2``; ``--summary`` prints mean +- sd per row over
the seeds in the CSV and writes the Markdown table beside it.
"""

import argparse
import csv
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _results import write_rows
from cloudkd.common.cli import format_table
from cloudkd.common.infer import DEFAULT_THRESHOLD, masks_from_probabilities, nodata_mask
from cloudkd.data import resolve_split
from cloudkd.teacher.plans import Budget, recipe
from cloudkd.evaluate.scoring import score_folder
from cloudkd.teacher.model import NnUNetTeacher, predict_folder
from cloudkd.teacher.train import train
from cloudkd.teacher.workspace import DEFAULT_DATASET_ID, Workspace

#: row -> (what it varies, training changes to the demo budget, inference options)
ROWS = {
    "base": ("nnU-Net's recipe at the demo size", {}, {}),
    "adamw": ("optimiser: AdamW 3e-3 + cosine", {"optimizer": "adamw"}, {}),
    "no_ds": ("deep supervision off", {"deep_supervision": False}, {}),
    "ce": ("loss: cross-entropy alone", {"loss": "ce"}, {}),
    "spatial0": ("spatial augmentation off", {"spatial": 0.0}, {}),
    "spatial2.5": ("spatial augmentation x2.5 (p 0.5)", {"spatial": 2.5}, {}),
    "oversample0": ("foreground oversampling 0", {"oversample": 0.0}, {}),
    "oversample1": ("foreground oversampling 1", {"oversample": 1.0}, {}),
    "tta": ("inference: mirror TTA", {}, {"tta": True}),
    # the prediction rule's threshold chosen on the fold's validation chips (never on the test split)
    "adamw_valthr": ("AdamW + inference: threshold fitted on the validation fold", {"optimizer": "adamw"},
                     {"threshold": "val"}),
    "adamw_e16": ("AdamW, 16 epochs (2x)", {"optimizer": "adamw", "epochs": 16}, {}),
    "adamw_e16_valthr": ("AdamW, 16 epochs + threshold fitted on the validation fold",
                         {"optimizer": "adamw", "epochs": 16}, {"threshold": "val"}),
    "adamw_e32": ("AdamW, 32 epochs (4x)", {"optimizer": "adamw", "epochs": 32}, {}),
    "adamw_e32_valthr": ("AdamW, 32 epochs + threshold fitted on the validation fold",
                         {"optimizer": "adamw", "epochs": 32}, {"threshold": "val"}),
    "ens2": ("inference: folds 0+1 ensemble", {}, {"folds": (0, 1)}),
    "batch8": ("batch 8 (2x pixels per iteration)", {"batch": 8}, {}),
    "patch512_b1": ("patch 512, batch 1 (same pixels)", {"patch": 512, "batch": 1}, {}),
    "patch128_b16": ("patch 128, batch 16 (same pixels)", {"patch": 128, "batch": 16}, {}),
    "width16": ("width 16..256 (4x compute)", {"base_features": 16, "max_features": 256}, {}),
    "width4": ("width 4..64", {"base_features": 4, "max_features": 64}, {}),
    "sgd_lr3e-2": ("SGD poly at 0.03", {"lr": 0.03}, {}),
    "adamw_lr1e-3": ("AdamW 1e-3 + cosine", {"optimizer": "adamw", "lr": 1e-3}, {}),
    "adamw_lr1e-2": ("AdamW 1e-2 + cosine", {"optimizer": "adamw", "lr": 1e-2}, {}),
    # the size levers again on top of the AdamW recipe that won the optimiser row (make demo's teacher)
    "adamw_width16": ("AdamW + width 16..256 (4x compute)",
                      {"optimizer": "adamw", "base_features": 16, "max_features": 256}, {}),
    "adamw_patch512_b1": ("AdamW + patch 512, batch 1 (same pixels)", {"optimizer": "adamw", "patch": 512, "batch": 1},
                          {}),
    "adamw_batch8": ("AdamW + batch 8 (2x pixels per iteration)", {"optimizer": "adamw", "batch": 8}, {}),
    "adamw_oversample0": ("AdamW + foreground oversampling 0", {"optimizer": "adamw", "oversample": 0.0}, {}),
    # the two levers that each beat the AdamW row at seed 0, together
    "adamw_oversample0_width16": ("AdamW + oversampling 0 + width 16..256",
                                  {"optimizer": "adamw", "oversample": 0.0, "base_features": 16,
                                   "max_features": 256}, {}),
    # inference levers on the uniform-patch recipe (make demo's teacher since 2026-12-04); they reuse its training
    "adamw_oversample0_valthr": ("AdamW + oversampling 0 + threshold fitted on the validation fold",
                                 {"optimizer": "adamw", "oversample": 0.0}, {"threshold": "val"}),
    "adamw_oversample0_tta": ("AdamW + oversampling 0 + mirror TTA", {"optimizer": "adamw", "oversample": 0.0},
                              {"tta": True}),
    # an ensemble of 3 teachers of fold 0 trained with different seeds (their mean probability): it stays free of the
    # student's validation labels, unlike a fold ensemble. Seed s ensembles the trainings of seeds 3s, 3s+1, 3s+2
    "adamw_oversample0_seeds3": ("AdamW + oversampling 0, mean of 3 seeds of fold 0",
                                 {"optimizer": "adamw", "oversample": 0.0}, {"members": 3}),
    "adamw_oversample0_seeds3_valthr": ("AdamW + oversampling 0, mean of 3 seeds + threshold fitted on the validation "
                                        "fold", {"optimizer": "adamw", "oversample": 0.0},
                                        {"members": 3, "threshold": "val"}),
    "adamw_oversample0_e16": ("AdamW + oversampling 0, 16 epochs (2x)",
                              {"optimizer": "adamw", "oversample": 0.0, "epochs": 16}, {}),
    "adamw_oversample0_e16_valthr": ("AdamW + oversampling 0, 16 epochs + threshold fitted on the validation fold",
                                     {"optimizer": "adamw", "oversample": 0.0, "epochs": 16}, {"threshold": "val"}),
    "adamw_oversample0_e16_seeds3": ("AdamW + oversampling 0, 16 epochs, mean of 3 seeds of fold 0",
                                     {"optimizer": "adamw", "oversample": 0.0, "epochs": 16}, {"members": 3}),
    "adamw_oversample0_e32": ("AdamW + oversampling 0, 32 epochs (4x)",
                              {"optimizer": "adamw", "oversample": 0.0, "epochs": 32}, {}),
    "adamw_oversample0_e32_valthr": ("AdamW + oversampling 0, 32 epochs + threshold fitted on the validation fold",
                                     {"optimizer": "adamw", "oversample": 0.0, "epochs": 32}, {"threshold": "val"}),
    "adamw_oversample0_e128": ("AdamW + oversampling 0, 128 epochs (16x; the study's long run)",
                               {"optimizer": "adamw", "oversample": 0.0, "epochs": 128}, {}),
    "adamw_oversample0_e128_valthr": ("AdamW + oversampling 0, 128 epochs + threshold fitted on the validation fold",
                                      {"optimizer": "adamw", "oversample": 0.0, "epochs": 128}, {"threshold": "val"}),
    "adamw_oversample0_spatial0": ("AdamW + oversampling 0 + spatial augmentation off",
                                   {"optimizer": "adamw", "oversample": 0.0, "spatial": 0.0}, {}),
}
COLUMNS = ["row", "seed", "varies", "params", "train_s", "s_per_iteration", "threshold", "test_jaccard", "precision",
           "recall", "real_jaccard", "real_precision", "real_recall"]
#: the thresholds a validation-fitted row chooses from
THRESHOLDS = np.round(np.arange(0.2, 0.71, 0.05), 2)


#: the training-recipe fields of a Budget (the rest is its size: epochs, iterations, patch, batch, width, norm)
RECIPE_FIELDS = ("optimizer", "lr", "loss", "deep_supervision", "spatial", "oversample")


#: the study's training length: the demo recipe's until 2026-12-04, when the demo moved to 16 epochs (the row
#: ``adamw_oversample0_e16``); kept, so that every row's trained teacher and CSV row stay what they were
ABLATION_EPOCHS = 8


def ablation_base() -> Budget:
    """Every row's starting point: the size of the "demo" teacher recipe at ``ABLATION_EPOCHS`` with nnU-Net's own
    training recipe (Budget's defaults), whatever recipe the demo itself uses now."""
    return replace(recipe("demo"), epochs=ABLATION_EPOCHS, **{f: getattr(Budget(), f) for f in RECIPE_FIELDS})


def training_key(changes: dict) -> str:
    """One workspace per distinct training recipe (rows that differ only at inference share it)."""
    if not changes:
        return "base"
    return "_".join(f"{k}-{v}" for k, v in sorted(changes.items()))


def prepared_workspace(demo_ws: Workspace, root: Path) -> Workspace:
    ws = Workspace(root)
    ws.root.mkdir(parents=True, exist_ok=True)
    for link, target in ((ws.raw, demo_ws.raw), (ws.preprocessed, demo_ws.preprocessed)):
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return ws


class SeedEnsemble:
    """Teachers of the same fold trained with different seeds, as one: their mean cloud probability, through the
    prediction rule (``predict_chip`` as :class:`NnUNetTeacher`'s)."""

    def __init__(self, members):
        self.members = list(members)

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.members)

    def predict_chip(self, refl, threshold: float = DEFAULT_THRESHOLD):
        prob = np.mean([m.predict_chip(refl)[0] for m in self.members], axis=0).astype(np.float32)
        return prob, masks_from_probabilities(prob[None], threshold, nodata_mask(refl)[None])[0]


def val_threshold(teacher: NnUNetTeacher, data: Path, folds_csv: Path, fold: int = 0) -> float:
    """The threshold of :data:`THRESHOLDS` with the best global Jaccard on the validation chips of ``fold`` (the
    chips teacher fold ``fold`` did not train on; ties: the one nearest the rule's default, 0.5), by the library's
    fit (``cloudkd.teacher.rule``) on this study's grid."""
    from cloudkd.data.folds import read_folds
    from cloudkd.teacher.rule import best_threshold, threshold_curve

    folds = read_folds(folds_csv)
    ids = list(folds.chip_id[folds.fold == fold])
    return best_threshold(threshold_curve(teacher, resolve_split(data, "train"), ids, [float(t) for t in THRESHOLDS]))


def score(teacher: NnUNetTeacher, split, pred: Path, threshold: float = DEFAULT_THRESHOLD):
    predict_folder(teacher, split.features_dir, pred, None, progress=False, threshold=threshold)
    rep = score_folder(pred, split.labels_dir)
    return rep.jaccard, rep.total.precision, rep.total.recall


def run_teacher(changes: dict, infer: dict, seed: int, demo_ws: Workspace, study: Path, test, real) -> dict:
    """Train (or reuse) the demo budget with ``changes`` and seed ``seed``, predict with ``infer`` (``tta``,
    ``folds``), score it: params, train_s (its epochs' time, summed over the folds it uses), s/iteration, test and
    real-chip Jaccard, precision and recall."""
    base = ablation_base()
    changes = {k: v for k, v in changes.items() if getattr(base, k) != v}  # e.g. the demo's own epochs
    folds = tuple(infer.get("folds", (0,)))
    members = int(infer.get("members", 1))
    train_s, per_iter, teachers, workspaces = 0.0, [], [], []
    for member_seed in range(seed * members, seed * members + members):  # one seed unless an ensemble of seeds
        budget = replace(base, seed=member_seed, **changes)
        ws = prepared_workspace(demo_ws, study / f"{training_key(changes)}_s{member_seed}")
        workspaces.append(ws)
        for fold in folds:  # a fold trained for another row is reused; its epochs' time still counts here
            r = train(ws, DEFAULT_DATASET_ID, fold=fold, budget=budget, device="cpu")
            train_s += r.epoch_seconds or float("nan")
            per_iter.append(r.seconds_per_iteration or float("nan"))
        teachers.append(NnUNetTeacher.from_workspace(ws, folds=folds, tta=bool(infer.get("tta"))))
    teacher = teachers[0] if members == 1 else SeedEnsemble(teachers)
    tag = "_".join(f"{k}-{v}" for k, v in sorted(infer.items())) or "plain"
    ws = workspaces[0]  # predictions go to the first member's workspace
    if members > 1:
        tag += f"_s{seed}"
    threshold = val_threshold(teacher, test.root, study.parent / "folds.csv", folds[0]) \
        if infer.get("threshold") == "val" else DEFAULT_THRESHOLD
    j, p, rc = score(teacher, test, ws.root / f"pred_{tag}", threshold)
    row = {"params": teacher.n_params, "train_s": round(train_s),
           "s_per_iteration": round(float(np.nanmean(per_iter)), 3), "threshold": threshold,
           "test_jaccard": round(j, 4), "precision": round(p, 4), "recall": round(rc, 4)}
    if real is not None:
        rj, rp, rr = score(teacher, real, ws.root / f"real_{tag}", threshold)
        row.update(real_jaccard=round(rj, 4), real_precision=round(rp, 4), real_recall=round(rr, 4))
    return row


def run_row(name: str, seed: int, demo_ws: Workspace, study: Path, test, real) -> dict:
    varies, changes, infer = ROWS[name]
    return {"row": name, "seed": seed, "varies": varies,
            **run_teacher(changes, infer, seed, demo_ws, study, test, real)}


def summarise(rows, md: Path):
    """mean +- sd over seeds per row, in ROWS order; written as Markdown."""
    out = []
    for name in ROWS:
        rs = [r for r in rows if r["row"] == name]
        if not rs:
            continue
        j = np.array([float(r["test_jaccard"]) for r in rs])
        real = np.array([float(r["real_jaccard"]) for r in rs if r.get("real_jaccard") not in (None, "")])
        pm = lambda a: "-" if not len(a) else (f"{a.mean():.4f}" if len(a) == 1 else f"{a.mean():.4f} ± {a.std(ddof=1):.4f}")
        out.append({"row": name, "varies": rs[0]["varies"], "seeds": len(rs), "params": rs[0]["params"],
                    "threshold": rs[0].get("threshold") or DEFAULT_THRESHOLD,
                    "train_s": round(np.mean([float(r["train_s"]) for r in rs])),
                    "s_per_iteration": round(np.mean([float(r["s_per_iteration"]) for r in rs]), 3),
                    "test_jaccard": pm(j),
                    "precision": round(np.mean([float(r["precision"]) for r in rs]), 4),
                    "recall": round(np.mean([float(r["recall"]) for r in rs]), 4), "real_jaccard": pm(real)})
    cols = list(out[0]) if out else []
    md.write_text(f"`python benchmarks/teacher_ablation.py` ({time.strftime('%Y-%m-%d')}, written by --summary or a "
                  "run): mean ± sd over the seeds in the CSV; test = the demo's 80 held-out generated chips, real = "
                  "the 4 labelled real chips; train_s = the folds' epoch time, on the machine's 2 cores, "
                  "possibly shared.\n\n" +
                  "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" +
                  "".join("| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in out))
    return out, cols


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--real", default="../shared/data/real_labelled", help="labelled real chips (skipped if absent)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="benchmarks/results/teacher_ablation.csv")
    ap.add_argument("--summary", action="store_true", help="only print and write the summary of the CSV")
    a = ap.parse_args()
    out = Path(a.out)
    rows = list(csv.DictReader(out.open())) if out.is_file() else []
    if not a.summary:
        os.environ.setdefault("nnUNet_def_n_proc", "1")
        demo_ws = Workspace(Path(a.demo) / "nnunet")
        if not (demo_ws.preprocessed / demo_ws.dataset_name(DEFAULT_DATASET_ID)).is_dir():
            raise SystemExit(f"{demo_ws.preprocessed}: no preprocessed demo data; run make demo first")
        test = resolve_split(a.data, "test")
        real = resolve_split(a.real, "train") if Path(a.real).is_dir() else None
        done = {(r["row"], int(r["seed"])) for r in rows}
        for seed in a.seeds:
            for name in a.rows:
                if (name, seed) in done:
                    continue
                row = run_row(name, seed, demo_ws, Path(a.demo) / "teacher_ablation", test, real)
                rows.append(row)
                write_rows(out, rows, COLUMNS)
                print(format_table([row], COLUMNS), flush=True)
    summary, cols = summarise(rows, out.with_suffix(".md"))
    print(format_table(summary, cols))
    print(f"-> {out}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
