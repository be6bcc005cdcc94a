"""Issue 30's levers for dim real cloud, each against labels-only at the demo's student budget, over seeds.

    python benchmarks/real_levers.py [--levers labels gain peer_real gain_peer_real] [--seeds 0 1 2] \
        [--data data/generated/demo] [--demo runs/demo] [--summary]

Levers (every run: unet-s, the demo's fold-0 split and student budget, ``cloudkd.demo.StudentBudget``, labels on
the generated training chips):

* ``labels``: labels only (the reference);
* ``gain``: gain randomisation (``--gain 0.5``: half the training chips darkened by a gain drawn log-uniformly
  from [``gain_min``, 1]; ``gain_min`` = 0.4 is the measured ratio of real to generated clear-ground brightness,
  ``benchmarks/results/cloud_brightness_chips.csv``, not a fitted value);
* ``peer_real``: the real-trained ukis-csmask peer (optional package) distils, by pixel KD (weight 1), on the
  real unlabelled chips of the *training half* of ``real_unlabelled`` only (``--kd-on unlabelled``): the
  labels teach the generated chips, the peer the real ones;
* ``gain_peer_real``: both;
* ``teacher_real``: like ``peer_real``, with the demo's own nnU-Net teacher (``DEMO/nnunet``, fold 0, trained on
  generated chips only) in the peer's place: no real label and no real-trained model anywhere in training;
* ``dark_ground``: labels only, on a dataset generated with the darker ground of ``SynthConfig.ground_gain_min``
  = 0.4 (every chip's ground, not its clouds, scaled by a gain log-uniform in [0.4, 1]; 0.4 is the same measured
  ratio), written once under ``--work`` from the ``--data`` dataset's own config: the same chips, clouds and
  labels' annotator draws, over darker ground. It is scored on the ``--data`` test split like every lever, and
  on its own test split (``own_test_jaccard``). The rows in ``benchmarks/results/real_levers.csv`` were all
  measured on the demo data of 2026-12-03, generated with the gain off; the lever's result made 0.4 the
  generator's default, so on a demo dataset generated since, ``labels`` already trains over the darker ground.

The real unlabelled chips are split once, by chip id: every other Eswatini chip trains (12), the other 11 and
the two other places (Eritrea ``iacc``, Kimberley ``ijgr``) are held out. No run sees the 4 labelled real chips
(nor ``real_chips``, which holds the same Chifunfu images).

Each run is scored on:

* the generated test split (80 chips, other locations): global Jaccard, precision, recall;
* the 4 labelled real chips (Chifunfu): global Jaccard, precision, recall, and recall by brightness band;
* agreement with the peer on the 13 held-out unlabelled real chips (the peer is a model, not a label):
  recall of the peer's cloud in the bands < 0.2 and 0.2-0.35, precision against it overall.

Rows land in ``--csv`` (default ``benchmarks/results/real_levers.csv``) as each run finishes; a lever + seed
already there is skipped. ``.md`` beside it: mean ± sd per lever.
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_rows
from distill_compare import fit_and_score
from cloudkd.common.cli import format_table
from cloudkd.data import load_index, resolve_split
from cloudkd.demo import StudentBudget
from cloudkd.evaluate.scoring import score_folder
from cloudkd.evaluate.bands import BAND_NAMES, bands_of_folders
from cloudkd.student.predict import predict_folder
from cloudkd.student.runs import load_student
from cloudkd.student.train import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LEVERS = {
    "labels": dict(),
    "gain": dict(gain=0.5),
    "peer_real": dict(peer=True),
    "gain_peer_real": dict(gain=0.5, peer=True),
    "dark_ground": dict(ground_gain_min=0.4),
    "teacher_real": dict(teacher=True),
}
COLUMNS = ["lever", "seed", "test_jaccard", "test_precision", "test_recall", "real_jaccard", "real_precision",
           "real_recall"] + [f"real_recall_{b}" for b in BAND_NAMES] + \
          ["peer_recall_<0.2", "peer_recall_0.2-0.35", "peer_precision", "val_jaccard", "train_s", "own_test_jaccard"]


def real_split(unlabelled_root: Path, work: Path):
    """The training half of the real unlabelled chips as a ``*_features`` folder of links (made once), and the
    held-out chip ids."""
    split = resolve_split(unlabelled_root, "test")
    idx = load_index(split, require_labels=False)
    esw = sorted(idx.chip_id[idx.location == "Eswatini"])
    train = esw[::2]
    held = sorted(set(idx.chip_id) - set(train))
    feats = work / "real_train_features"
    feats.mkdir(parents=True, exist_ok=True)
    for cid in train:
        link = feats / cid
        if not link.exists():
            link.symlink_to((split.features_dir / cid).resolve(), target_is_directory=True)
    meta = idx[idx.chip_id.isin(train)][["chip_id", "location", "datetime"]]
    meta.to_csv(work / "real_train_metadata.csv", index=False)
    return feats, split, held


def lever_data(data: str, work: Path, spec: dict) -> str:
    """The dataset a lever trains on: ``data``, or (``ground_gain_min``) the same config with the darker ground,
    generated once under ``work``."""
    if "ground_gain_min" not in spec:
        return data
    from dataclasses import replace

    from cloudkd.data.synth.sentinel2 import recorded_config, synthesize

    cfg = replace(recorded_config(data), ground_gain_min=spec["ground_gain_min"])
    root = work / f"data_ground_gain_{spec['ground_gain_min']:g}"
    synthesize(root, cfg, progress=False)  # reused when already complete
    return str(root)


def peer_masks(split, out: Path) -> Path:
    from cloudkd.teacher import peer

    if not out.is_dir() or len(list(out.glob("*.tif"))) < len(split.chip_ids()):
        peer.predict_folder(split.features_dir, out, progress=False)
    return out


def peer_agreement(unl, peer_dir: Path, pred: Path, held) -> dict:
    """Recall of the peer's cloud in the two dim bands and precision against it, of the masks in ``pred``."""
    p = bands_of_folders(unl.features_dir, peer_dir, {"s": pred}, held)
    p = p[p.method == "s"].set_index("band")
    right = (p["precision"].fillna(0) * p["pred_px"]).sum()
    return {"peer_recall_<0.2": round(float(p.loc["<0.2", "recall"]), 4),
            "peer_recall_0.2-0.35": round(float(p.loc["0.2-0.35", "recall"]), 4),
            "peer_precision": round(float(right / max(1, p["pred_px"].sum())), 4)}


def summarise(rows):
    out = []
    for lever in dict.fromkeys(r["lever"] for r in rows):
        mine = [r for r in rows if r["lever"] == lever]
        row = {"lever": lever, "seeds": len(mine)}
        for k in ("test_jaccard", "own_test_jaccard", "real_jaccard", "real_recall_<0.2", "peer_recall_<0.2",
                  "peer_recall_0.2-0.35", "peer_precision"):
            v = np.array([float(r.get(k) or r["test_jaccard"]) for r in mine])  # own test: the test, before it
            row[k] = f"{v.mean():.4f}" + (f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else "")
        out.append(row)
    return out


def main():
    sb = StudentBudget()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--work", default="runs/real_levers")
    ap.add_argument("--real", default=str(SHARED / "real_labelled"))
    ap.add_argument("--real-unlabelled", default=str(SHARED / "real_unlabelled"))
    ap.add_argument("--csv", default="benchmarks/results/real_levers.csv")
    ap.add_argument("--summary", action="store_true", help="train nothing: write the summary of the CSV")
    a = ap.parse_args()
    work = Path(a.work)
    csv_path = Path(a.csv)
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    done = {(r["lever"], int(r["seed"])) for r in rows}
    test = resolve_split(a.data, "test")
    real = resolve_split(a.real, "train")
    real_train, unl, held = real_split(Path(a.real_unlabelled), work)
    peer_dir = peer_masks(unl, work / "peer_real_unlabelled")
    for seed in [] if a.summary else a.seeds:
        for lever in a.levers:
            if (lever, seed) in done:
                continue
            spec = LEVERS[lever]
            run_dir = work / f"{lever}_s{seed}"
            data = lever_data(a.data, work, spec)
            real_kd = bool(spec.get("peer") or spec.get("teacher"))  # a teacher distils on the real training half
            cfg = TrainConfig(data=data, out=str(run_dir), model=sb.model, folds=str(Path(a.demo) / "folds.csv"),
                              epochs=sb.epochs, batch_size=sb.batch, crop=sb.crop, lr=sb.lr, label_weight=1.0,
                              kd_weight=1.0 if real_kd else 0.0, kd="pixel", temperature=sb.temperature,
                              teacher_onnx="ukis-csmask" if spec.get("peer") else None,
                              teacher_nnunet=str(Path(a.demo) / "nnunet") if spec.get("teacher") else None,
                              unlabelled=str(real_train) if real_kd else None,
                              kd_on="unlabelled" if real_kd else "all", gain=spec.get("gain", 0.0),
                              seed=seed, progress=False)
            t0 = time.time()
            row = {"lever": lever, "seed": seed, **fit_and_score(cfg, test, real)}
            row["own_test_jaccard"] = row["test_jaccard"]
            if data != a.data:  # also its own generated test split
                own = resolve_split(data, "test")
                predict_folder(load_student(run_dir), own.features_dir, run_dir / "own_test_pred", progress=False)
                row["own_test_jaccard"] = round(score_folder(run_dir / "own_test_pred", own.labels_dir).jaccard, 4)
            b = bands_of_folders(real.features_dir, real.labels_dir, {"s": run_dir / "real_pred"}, real.chip_ids())
            b = b[b.method == "s"].set_index("band")
            for name in BAND_NAMES:
                row[f"real_recall_{name}"] = round(float(b.loc[name, "recall"]), 4)
            pred = run_dir / "unlabelled_pred"
            predict_folder(load_student(run_dir), unl.features_dir, pred, chip_ids=held, progress=False)
            row.update(peer_agreement(unl, peer_dir, pred, held))
            # read again before writing: several processes may share the CSV (e.g. one per lever)
            rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
            rows.append({k: row.get(k) for k in COLUMNS})
            write_rows(csv_path, rows, COLUMNS)
            print(f"{lever} seed {seed}: {row} ({time.time() - t0:.0f} s)", flush=True)
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    for r in rows:  # rows written before the precision against the peer was recorded
        pred = work / f"{r['lever']}_s{r['seed']}" / "unlabelled_pred"
        if not r.get("peer_precision") and pred.is_dir():
            r.update(peer_agreement(unl, peer_dir, pred, held))
    if rows:
        write_rows(csv_path, rows, COLUMNS)
        s = summarise(rows)
        table = format_table(s, list(s[0]))
        csv_path.with_suffix(".md").write_text(
            f"`python benchmarks/real_levers.py` ({time.strftime('%Y-%m-%d')}); mean ± sd over seeds\n\n{table}\n")
        print(table)


if __name__ == "__main__":
    sys.exit(main())
