"""Which CPU budget makes the nnU-Net teacher worth distilling? Teachers trained at several budgets on the demo's
data (fold 0), each scored on the held-out test split with the leaderboard metric.

    python benchmarks/teacher_budget.py --demo runs/demo --data data/generated/demo \
        --variants demo8 demo8_intensity demo40 [--out benchmarks/results/teacher_budget.csv]

Every variant trains in its own workspace under DEMO/teacher_budget/NAME, which shares the demo workspace's
nnU-Net raw and preprocessed data (symbolic links; ``make demo`` prepares them), so nothing of the demo's own
teacher is touched. A variant is the demo's budget with some fields changed (``VARIANTS``); ``*_intensity``
variants restore nnU-Net's brightness/contrast/gamma augmentation (``CLOUDKD_NNUNET_INTENSITY_AUG=1``), the
equal-budget comparison for the trainer's choice. Rows are appended to the CSV as each variant finishes
(a finished variant is reused, not retrained).
"""

import argparse
import csv
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from _results import write_rows
from cloudkd.data import resolve_split
from cloudkd.common.cli import format_table
from cloudkd.demo import DemoConfig
from cloudkd.evaluate.scoring import score_folder
from cloudkd.teacher.model import NnUNetTeacher, predict_folder
from cloudkd.teacher.workspace import DEFAULT_DATASET_ID, Workspace
from cloudkd.teacher.train import train

#: name -> (changes to the demo's budget, intensity augmentation on)
VARIANTS = {
    "demo8": ({"epochs": 8}, False),
    "demo8_intensity": ({"epochs": 8}, True),
    "demo24": ({"epochs": 24}, False),
    "demo40": ({"epochs": 40}, False),
    "wide16_24": ({"epochs": 24, "base_features": 16, "max_features": 256}, False),
}
COLUMNS = ["variant", "epochs", "iters_per_epoch", "patch", "batch", "features", "intensity_aug", "params",
           "train_s", "s_per_iteration", "test_jaccard", "precision", "recall"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--variants", nargs="+", default=["demo8", "demo8_intensity", "demo40"], choices=list(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results/teacher_budget.csv")
    a = ap.parse_args()
    demo_ws = Workspace(Path(a.demo) / "nnunet")
    if not (demo_ws.preprocessed / demo_ws.dataset_name(DEFAULT_DATASET_ID)).is_dir():
        raise SystemExit(f"{demo_ws.preprocessed}: no preprocessed demo data; run make demo first")
    test = resolve_split(a.data, "test")
    out = Path(a.out)
    done = {r["variant"]: r for r in csv.DictReader(out.open())} if out.is_file() else {}
    rows = list(done.values())
    for name in a.variants:
        if name in done:
            continue
        changes, intensity = VARIANTS[name]
        budget = replace(DemoConfig().teacher_budget, **changes)
        ws = Workspace(Path(a.demo) / "teacher_budget" / name)
        ws.root.mkdir(parents=True, exist_ok=True)
        for link, target in ((ws.raw, demo_ws.raw), (ws.preprocessed, demo_ws.preprocessed)):
            if not link.exists():
                link.symlink_to(target.resolve(), target_is_directory=True)
        os.environ["CLOUDKD_NNUNET_INTENSITY_AUG"] = "1" if intensity else "0"
        t0 = time.perf_counter()
        r = train(ws, DEFAULT_DATASET_ID, fold=0, budget=budget, device="cpu")
        train_s = time.perf_counter() - t0
        teacher = NnUNetTeacher.from_workspace(ws)
        pred = ws.root / "test_pred"
        predict_folder(teacher, test.features_dir, pred, None, progress=False)
        rep = score_folder(pred, test.labels_dir)
        row = {"variant": name, "epochs": budget.epochs, "iters_per_epoch": budget.iters_per_epoch,
               "patch": budget.patch, "batch": budget.batch,
               "features": f"{budget.base_features}-{budget.max_features}", "intensity_aug": int(intensity),
               "params": teacher.n_params, "train_s": round(train_s),
               "s_per_iteration": round(r.seconds_per_iteration or float("nan"), 3),
               "test_jaccard": round(rep.jaccard, 4), "precision": round(rep.total.precision, 4),
               "recall": round(rep.total.recall, 4)}
        rows.append(row)
        write_rows(out, rows, COLUMNS)
        print(format_table([row], COLUMNS), flush=True)
    print(format_table(rows, COLUMNS))
    print(f"-> {out}; budget of each variant: the demo's ({asdict(DemoConfig().teacher_budget)}) with the changes "
          f"in VARIANTS")


if __name__ == "__main__":
    main()
