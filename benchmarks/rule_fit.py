"""The student's prediction rule, fitted on the generated validation split: which fit transfers?

    python benchmarks/rule_fit.py --runs RUN ... [--data data/generated/demo] [--real ../shared/data/real_labelled] \
        [--unlabelled ../shared/data/real_chips ../shared/data/real_unlabelled] [--work runs/rule_fit]

For every student run (trained already; its weights are not touched) and every way of fitting its rule on the run's
own validation chips (``cloudkd.student.rule.fit_rule`` with ``record=False``):

* ``default``: threshold 0.5, no dilation (no fit);
* ``dilation``: the dilation 0..12 px at threshold 0.5 (``fit-rule``'s fit before 2026-12-05);
* ``joint``: threshold (0.05 .. 0.95) and dilation 0..12 px together (``fit-rule``'s fit now; 12 px is the annotator
  model's median margin);
* ``joint24``: the same with dilations up to 24 px (past the median margin),

the fitted rule is applied, never tuned, to the generated test split and to the labelled real chips (global
Jaccard, precision, recall), and compared with the optional ukis-csmask peer on the unlabelled real chips (recall of
the peer's cloud by brightness band, precision against it, Jaccard of the two masks). Each finished (run, fit) row
is written to ``--csv`` at once and skipped on the next call.

``--grid NAME ...`` (runs of ``--runs``) also writes, for those runs, the global Jaccard of every threshold of the
fit's grid with every dilation 0..24 px on the validation chips, the generated test split and the real chips
(``--grid-csv``, default ``benchmarks/results/rule_fit_grid.csv``): the surface the fits choose from.
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_rows
from cloudkd.common.cli import format_table
from cloudkd.common.infer import FIT_THRESHOLDS
from cloudkd.data import load_index, resolve_split
from cloudkd.evaluate.bands import BAND_NAMES, bands_of_folders
from cloudkd.evaluate.scoring import score_folder
from cloudkd.student.predict import predict_folder
from cloudkd.student.rule import DEFAULT_MAX_DILATE, fit_rule, rule_confusions, validation_index
from cloudkd.student.runs import load_student, resolve_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FITS = {"default": None, "dilation": dict(threshold=0.5, max_dilate=DEFAULT_MAX_DILATE),
        "joint": dict(max_dilate=DEFAULT_MAX_DILATE), "joint24": dict(max_dilate=24)}


def peer_masks(root: Path, work: Path):
    """The peer's masks of the chips of ``root`` (written once under ``work``), or None without the peer."""
    from cloudkd.teacher import peer

    if not peer.available():
        return None
    split = resolve_split(root, "test")
    out = work / f"peer_{root.name}"
    if not out.is_dir() or len(list(out.glob("*.tif"))) < len(split.chip_ids()):
        peer.predict_folder(split.features_dir, out, progress=False)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="student run folders (name: LABEL=FOLDER or FOLDER)")
    ap.add_argument("--fits", nargs="+", default=list(FITS), choices=list(FITS))
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--real", default=str(SHARED / "real_labelled"))
    ap.add_argument("--unlabelled", nargs="*", default=[str(SHARED / "real_chips"), str(SHARED / "real_unlabelled")])
    ap.add_argument("--work", default="runs/rule_fit")
    ap.add_argument("--csv", default="benchmarks/results/rule_fit.csv")
    ap.add_argument("--grid", nargs="*", default=[], help="names of --runs whose whole (threshold, dilation) surface "
                                                          "to write")
    ap.add_argument("--grid-csv", default="benchmarks/results/rule_fit_grid.csv")
    a = ap.parse_args()
    work, csv_path = Path(a.work), Path(a.csv)
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    done = {(r["run"], r["fit"]) for r in rows}
    test = resolve_split(a.data, "test")
    real = resolve_split(a.real, "train") if a.real and Path(a.real).is_dir() else None
    unlabelled = [(Path(u), peer_masks(Path(u), work)) for u in a.unlabelled if Path(u).is_dir()]
    unlabelled = [(u, p) for u, p in unlabelled if p is not None]
    grid_path = Path(a.grid_csv)
    grid_rows = list(csv.DictReader(grid_path.open())) if a.grid and grid_path.is_file() else []
    for spec in a.runs:
        name, _, folder = spec.rpartition("=")
        folder = Path(folder)
        name = name or folder.name
        model = load_student(folder)
        if name in a.grid and name not in {r["run"] for r in grid_rows}:
            _, info, _ = resolve_run(folder)
            splits = {"val": validation_index(info, folder / "student.json"), "test": load_index(test)}
            if real is not None:
                splits["real"] = load_index(real)
            for split_name, index in splits.items():
                table = rule_confusions(model, index, FIT_THRESHOLDS, 24)
                grid_rows += [{"run": name, "split": split_name, "threshold": t, "dilate": d,
                               "jaccard": round(c.iou(empty=1.0), 4)} for (t, d), c in table.items()]
            write_rows(grid_path, grid_rows)
            print(f"{name}: surface -> {grid_path}", flush=True)
        for fit_name in a.fits:
            if (name, fit_name) in done:
                continue
            t0 = time.perf_counter()
            kw = FITS[fit_name]
            if kw is None:
                threshold, dilate, val = 0.5, 0, None
            else:
                f = fit_rule(folder, record=False, progress=False, **kw)
                threshold, dilate, val = f.threshold, f.dilate, round(f.after, 4)
            row = {"run": name, "fit": fit_name, "threshold": threshold, "dilate": dilate, "val_jaccard": val}
            for prefix, split in (("test", test), ("real", real)):
                if split is None:
                    continue
                out = work / name / fit_name / prefix
                predict_folder(model, split.features_dir, out, threshold=threshold, dilate=dilate, progress=False)
                rep = score_folder(out, split.labels_dir)
                row.update({f"{prefix}_jaccard": round(rep.jaccard, 4),
                            f"{prefix}_precision": round(rep.total.precision, 4),
                            f"{prefix}_recall": round(rep.total.recall, 4)})
            counts = np.zeros((len(BAND_NAMES), 2))  # peer cloud, of it predicted
            pred_px = hit_px = 0
            for root, peer in unlabelled:
                split = resolve_split(root, "test")
                out = work / name / fit_name / root.name
                predict_folder(model, split.features_dir, out, threshold=threshold, dilate=dilate, progress=False)
                t = bands_of_folders(split.features_dir, peer, {"m": out}, split.chip_ids())
                t = t[t.method == "m"].fillna(0.0)
                counts[:, 0] += t["label_px"].to_numpy()
                counts[:, 1] += np.rint(t["recall"].to_numpy() * t["label_px"].to_numpy())
                pred_px += t["pred_px"].sum()
                hit_px += np.rint(t["precision"].to_numpy() * t["pred_px"].to_numpy()).sum()
            if unlabelled:
                for band, (n, hit) in zip(BAND_NAMES, counts):
                    row[f"peer_recall_{band}"] = round(hit / n, 4) if n else None
                peer_px, found = counts[:, 0].sum(), counts[:, 1].sum()
                row["peer_recall"] = round(found / peer_px, 4)
                row["peer_precision"] = round(hit_px / pred_px, 4) if pred_px else None
                row["peer_jaccard"] = round(found / (pred_px + peer_px - found), 4)
            row["seconds"] = round(time.perf_counter() - t0)
            rows.append(row)
            write_rows(csv_path, rows)
            print(format_table([row], list(row)), flush=True)
    summary = []
    family = (lambda run: run.rsplit("_s", 1)[0] if run.rsplit("_s", 1)[-1].isdigit() else run)
    for fam in dict.fromkeys(family(r["run"]) for r in rows):
        for fit_name in FITS:
            mine = [r for r in rows if r["fit"] == fit_name and family(r["run"]) == fam]
            if not mine:
                continue
            out = {"runs": fam, "fit": fit_name, "seeds": len(mine),
                   "rules": " ".join(f"{float(r['threshold']):g}/{r['dilate']}" for r in mine)}
            for col in ("test_jaccard", "real_jaccard", "peer_jaccard", "peer_recall_<0.2", "peer_recall_0.2-0.35",
                        "peer_precision"):
                v = np.array([float(r[col]) for r in mine if r.get(col) not in (None, "")])
                if len(v):
                    out[col] = f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
            summary.append(out)
    md = format_table(summary, list(summary[0])) if summary else ""
    print(md)
    md_path = csv_path.with_suffix(".md")  # every call that added rows, the earlier ones kept
    calls = [ln for ln in md_path.read_text().splitlines() if ln.startswith("    python benchmarks/rule_fit.py")] \
        if md_path.is_file() else []
    call = f"    python benchmarks/rule_fit.py {' '.join(sys.argv[1:])}"
    calls += [call] if call not in calls else []
    md_path.write_text(
        f"The calls that wrote the rows ({time.strftime('%Y-%m-%d')}, 2 cores; the runs are trained students, their "
        "weights untouched):\n\n" + "\n".join(calls) + "\n\nMean ± sd over the seeds of each run family; rules: "
        "threshold/dilation (px) fitted on each run's validation chips (`default`: no fit; `dilation`: the dilation "
        "at 0.5, fit-rule before 2026-12-05; `joint`: threshold and dilation <= 12 px, fit-rule now; `joint24`: "
        "dilation <= 24 px); test: the generated test split; real: the labelled real chips; peer_*: against the "
        "ukis-csmask peer on the unlabelled real chips (recall of its cloud by brightness band, precision against "
        f"it, Jaccard of the two masks).\n\n{md}\n")


if __name__ == "__main__":
    main()
