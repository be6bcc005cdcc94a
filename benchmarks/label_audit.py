"""Does the label audit find wrong labels, and does leaving them out of training pay? (issue 19)

    python benchmarks/label_audit.py [--noise 0.08] [--seeds 0 1] [--epochs 10] [--oof-epochs 10 20]

1. Data: the demo's benchmark (160 train / 80 test chips of 512x512, ``cloudkd.demo.DemoConfig``) generated twice,
   clean and with ``--noise`` of its train labels wrong (``SynthConfig.label_noise``: swap, shift, empty, full,
   nodata; the kinds are recorded in ``train_synth_info.csv``). The features are identical; test labels are clean.
   The clean one is the demo's own (``data/generated/demo``, reused when present). A third clean dataset with
   another seed (other chips) trains the "clean judge".
2. Audits of the noisy train split, each scored by the average precision of its ranking for the injected noise:
   * ``clean judge``: a student trained on the clean labels of the other chips (``cloudkd evaluate audit --model``);
   * ``out of fold``: one student per location-grouped fold, trained on the noisy labels of the other folds
     (``cloudkd evaluate audit --folds --train``), at each ``--oof-epochs`` budget;
   * ``held-out``: the same ``--noise`` injected into the judge's chips (another seed: other chips, other noise),
     each judged by every out-of-fold student (none saw them): five more rankings per budget, for the mean and
     spread of AP. One ranking of 13 wrong labels moves by about 0.05 with a single chip; these show how much.
3. Training (unet-s, labels only, the demo student's budget, best epoch on fold 0), scored on the clean held-out
   test split: ``noisy`` (every chip), ``audited`` (the chips the out-of-fold audit puts above ``--above`` left
   out, as ``--exclude`` does) and ``clean`` (the oracle: true labels). Recovery = (audited - noisy) / (clean -
   noisy) of the mean test Jaccard over ``--seeds``.

Writes ``benchmarks/results/label_audit.csv`` (one row per audit or training run; finished rows are reused) and
``label_audit.md``, and ``docs/label_audit.png`` (precision-recall of both audits). Work goes to ``--work``.
"""

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from _results import write_rows
from cloudkd.common.cli import format_table
from cloudkd.data.chips import load_index
from cloudkd.data.folds import make_folds, read_folds, write_folds
from cloudkd.data.roots import resolve_split
from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize
from cloudkd.demo import DemoConfig, StudentBudget
from cloudkd.evaluate import audit as A
from cloudkd.evaluate.scoring import score_folder
from cloudkd.student.predict import predict_folder
from cloudkd.student.runs import load_student
from cloudkd.student.train import TrainConfig, fit

COLUMNS = ["what", "seed", "n_chips", "n_noisy", "n_excluded", "noisy_excluded", "average_precision",
           "val_jaccard", "test_jaccard", "seconds"]


def main():
    demo, sb = DemoConfig(), StudentBudget()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", type=float, default=0.08)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=int, default=sb.epochs)
    ap.add_argument("--oof-epochs", nargs="+", type=int, default=[sb.epochs, 2 * sb.epochs],
                    help="budgets of the out-of-fold students; the first one's audit makes the exclusion list")
    ap.add_argument("--above", type=float, default=A.EXCLUDE_ABOVE,
                    help="suspicion above which the audit excludes a chip")
    ap.add_argument("--work", default="runs/label_audit")
    ap.add_argument("--csv", default="benchmarks/results/label_audit.csv")
    ap.add_argument("--png", default="docs/label_audit.png")
    a = ap.parse_args()
    work = Path(a.work)
    base_cfg = SynthConfig(n_train=demo.n_train, n_test=demo.n_test, size=demo.size, seed=demo.seed,
                           difficulty=demo.difficulty)
    roots = {"clean": Path(demo.data), "noisy": work / "data" / f"noisy{a.noise:g}",
             "judge": work / "data" / "judge", "held": work / "data" / f"held_noisy{a.noise:g}"}
    synthesize(roots["clean"], base_cfg, progress=False)
    synthesize(roots["noisy"], replace(base_cfg, label_noise=a.noise), progress=False)
    synthesize(roots["judge"], replace(base_cfg, seed=base_cfg.seed + 1000), progress=False)
    synthesize(roots["held"], replace(base_cfg, seed=base_cfg.seed + 1000, label_noise=a.noise), progress=False)
    info = pd.read_csv(roots["noisy"] / "train_synth_info.csv").fillna("")
    noisy_ids = set(info.loc[info["label_noise"] != "", "chip_id"])
    split = resolve_split(roots["noisy"], "train")
    index = load_index(split, require_labels=True)
    folds_csv = work / "folds.csv"
    write_folds(make_folds(index, k=demo.folds, seed=demo.seed), folds_csv)
    test = resolve_split(roots["clean"], "test")
    base = TrainConfig(data="", out="", model=sb.model, epochs=a.epochs, batch_size=sb.batch, crop=sb.crop,
                       lr=sb.lr, limit_train_batches=sb.steps, progress=False)

    csv_path = Path(a.csv)
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    done = {(r["what"], int(r["seed"])) for r in rows}

    def save(row):
        rows.append(row)
        write_rows(csv_path, rows, COLUMNS)
        print(format_table([row], COLUMNS), flush=True)

    tables = {}

    def save_audit(what, table, wrong, seconds):
        """One audit's row: its AP for the ``wrong`` chip ids, and what it would exclude."""
        flagged = set(table.loc[table["suspicion"] > a.above, "chip_id"])
        save({"what": what, "seed": 0, "n_chips": len(table), "n_noisy": len(wrong),
              "n_excluded": len(flagged), "noisy_excluded": len(flagged & wrong),
              "average_precision": round(A.average_precision(table["suspicion"], table["chip_id"].isin(wrong)), 4),
              "val_jaccard": "", "test_jaccard": "", "seconds": round(seconds, 1)})

    def audit(what, judge_rows, seconds):
        table = A.rank(judge_rows)
        table.to_csv(work / f"audit_{what.replace(' ', '_')}.csv", index=False)
        tables[what] = table
        if (what, 0) not in done:
            save_audit(what, table, noisy_ids, seconds)
        return table

    # 2a. the clean judge: trained on the clean labels of other chips
    judge_run = work / "judge"
    if not (judge_run / "student.pt").is_file():
        fit(replace(base, data=str(roots["judge"]), out=str(judge_run)))
    t0 = time.perf_counter()
    audit("audit clean judge", A.audit_chips(index, A.load_model(judge_run), progress=False),
          time.perf_counter() - t0)
    # 2b. out of fold, on the noisy labels, at each --oof-epochs budget (the first one's list goes to training)
    # 2c. held out: the same noise on the judge's chips (another seed), judged by each out-of-fold student, none of
    # which saw them: five more rankings per budget, on other chips and other noise
    held_info = pd.read_csv(roots["held"] / "train_synth_info.csv").fillna("")
    held_ids = set(held_info.loc[held_info["label_noise"] != "", "chip_id"])
    held_index = load_index(resolve_split(roots["held"], "train"), require_labels=True)
    exclude, oof = work / "exclude.txt", None
    for ep in a.oof_epochs:
        first = oof is None
        tag = "" if first else f" ({ep} epochs)"
        runs = A.train_fold_models(roots["noisy"], folds_csv, work / ("oof" if first else f"oof_e{ep}"),
                                   replace(base, epochs=ep))
        models = {k: A.load_model(run) for k, run in runs.items()}
        t0 = time.perf_counter()
        table = audit(f"audit out of fold{tag}", A.audit_out_of_fold(index, read_folds(folds_csv), models),
                      time.perf_counter() - t0)
        if first:
            oof = table
            n_excluded = A.write_exclude(oof, exclude, a.above, "out of fold")
        for k, m in models.items():
            what = f"audit held-out{tag} fold{k}"
            if (what, 0) not in done:
                t0 = time.perf_counter()
                held = A.rank(A.audit_chips(held_index, m, progress=False))
                save_audit(what, held, held_ids, time.perf_counter() - t0)

    # 3. training: noisy, audited, clean
    for seed in a.seeds:
        for what, data, excl in (("train noisy", roots["noisy"], None), ("train audited", roots["noisy"], exclude),
                                 ("train clean", roots["clean"], None)):
            if (what, seed) in done:
                continue
            run = work / "train" / f"{what.split()[1]}_s{seed}"
            t0 = time.perf_counter()
            r = fit(replace(base, data=str(data), out=str(run), folds=str(folds_csv), val_fold=0, seed=seed,
                            exclude=str(excl) if excl else None))
            seconds = time.perf_counter() - t0
            predict_folder(load_student(run), test.features_dir, run / "test_pred", progress=False)
            rep = score_folder(run / "test_pred", test.labels_dir)
            save({"what": what, "seed": seed, "n_chips": len(index), "n_noisy": 0 if what == "train clean"
                  else len(noisy_ids), "n_excluded": n_excluded if excl else 0,
                  "noisy_excluded": len(set(oof.loc[oof["suspicion"] > a.above, "chip_id"]) & noisy_ids)
                  if excl else 0, "average_precision": "", "val_jaccard": round(r.val_jaccard, 4),
                  "test_jaccard": round(rep.jaccard, 4), "seconds": round(seconds)})

    df = pd.DataFrame(rows)
    summary = []
    df["what"] = df["what"].str.replace(r"^(audit held-out.*) fold\d+$", r"\1, each fold's student", regex=True)
    for what, g in df.groupby("what", sort=False):
        s = {"what": what, "runs": len(g)}
        if what.startswith("audit"):
            v = g["average_precision"].astype(float)
            s["n_noisy"] = g.iloc[0]["n_noisy"]
            s.update({k: round(g[k].astype(float).mean(), 1) for k in ("n_excluded", "noisy_excluded")})
            s["average_precision"] = round(v.mean(), 4) if len(v) == 1 else \
                f"{v.mean():.4f} (min {v.min():.4f}, max {v.max():.4f})"
        else:
            v = g["test_jaccard"].astype(float)
            s.update({"test_jaccard_mean": round(v.mean(), 4),
                      "test_jaccard_sd": round(v.std(ddof=1), 4) if len(v) > 1 else None})
        summary.append(s)
    trainings = ["train noisy", "train audited", "train clean"]  # the audits first, as they ran
    summary.sort(key=lambda s: trainings.index(s["what"]) + 1 if s["what"] in trainings else 0)
    means = {s["what"]: s.get("test_jaccard_mean") for s in summary}
    lines = []
    if all(means.get(f"train {w}") is not None for w in ("noisy", "audited", "clean")):
        cost = means["train clean"] - means["train noisy"]
        gain = means["train audited"] - means["train noisy"]
        lines.append(f"Noise costs {cost:+.4f} Jaccard (clean - noisy); the audit recovers {gain:+.4f}"
                     + (f" = {100 * gain / cost:.0f} % of it." if cost > 0 else " (noise cost nothing measurable)."))
    cols = list(dict.fromkeys(k for s in summary for k in s))
    md = format_table([{k: s.get(k) for k in cols} for s in summary], cols)
    csv_path.with_suffix(".md").write_text(
        f"{len(noisy_ids)} of {len(index)} train labels wrong ({a.noise:g}); exclusion above suspicion {a.above}; "
        f"unet-s, labels only, {a.epochs} epochs; seeds {a.seeds}.\n\n{md}\n\n" + "\n".join(lines) + "\n")
    print(md + "\n" + "\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloudkd.common.viz import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for what, table in tables.items():
        hits = table["chip_id"].isin(noisy_ids).to_numpy()
        tp = np.cumsum(hits)
        ax.plot(tp / hits.sum(), tp / np.arange(1, len(hits) + 1),
                label=f"{what[6:]} (AP {A.average_precision(table['suspicion'], hits):.2f})")
    ax.set_xlabel(f"recall of the {len(noisy_ids)} wrong labels")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"cloudkd audit on {len(index)} generated chips, {a.noise:g} wrong labels", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    print(save_figure(fig, a.png))


if __name__ == "__main__":
    main()
