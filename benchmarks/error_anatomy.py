"""Where do the models lose to the label ceiling? Each model's errors on the generated test split, split by what
the generator knows and the model cannot see.

    python benchmarks/error_anatomy.py --data data/generated/demo \
        --pred teacher=runs/demo/predictions/teacher student=runs/demo/predictions/student ... \
        [--out benchmarks/results/error_anatomy.csv]

Every test chip is rendered again in memory from its plan (as ``benchmarks/label_ceiling.py`` does; each
re-rendered label must equal the label file, pixel for pixel), which gives its true opacity ``alpha`` and the
**oracle** label: the annotator rule on the true opacity with its margin fixed at its median, the best outline a
deterministic model can draw (0.93 against the labels on the demo's split). A pixel a model gets wrong against the
dataset's label is then either

* **margin** noise: the model agrees with the oracle there; the label differs only because its annotator drew
  another margin (a random draw no image shows); or
* a **model** error: the model disagrees with the oracle too. These are split by side (``fp``: the model marks
  cloud the oracle does not, ``fn``: it misses the oracle's cloud) and by the true opacity of the pixel:
  ``clear`` (alpha < 0.05: no cloud at all), ``thin`` (0.05 to 0.5) and ``dense`` (>= 0.5); false cloud on
  clear pixels is ``outline`` within ``NEAR_PX`` (32) px of the oracle's cloud (a wider outline than the
  oracle's) and ``away`` beyond (ground taken for cloud).

Columns per model: the global Jaccard against the labels and against the oracle, and every error class as a share
of the model's union with the label (so ``jaccard + sum(error shares) = 1``). The model's reducible part is
``model_*``: what a model that drew the oracle's outline would gain. Writes the CSV and a Markdown table beside it.
"""

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

from _results import write_rows
from cloudkd.common.cli import format_table
from cloudkd.data import DataError, read_label, resolve_split
from cloudkd.data.synth.catalogue import LOCATIONS
from cloudkd.data.synth.ceiling import (ERROR_CLASSES, NEAR_PX, check_rebuilt_label, error_counts, oracle_label,
                                        rebuild_plans)
from cloudkd.data.synth.sentinel2 import recorded_config, render_chip

COLUMNS = (["model", "chips", "jaccard", "jaccard_vs_oracle"] + list(ERROR_CLASSES) + ["oracle_jaccard"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a generated dataset (its synth.json and test split)")
    ap.add_argument("--pred", nargs="+", required=True, metavar="NAME=DIR",
                    help="models' mask folders (submission format) for the test split")
    ap.add_argument("--chips", type=int, default=0, help="only the first N test chips (by chip id); 0 = all")
    ap.add_argument("--out", default="benchmarks/results/error_anatomy.csv")
    a = ap.parse_args()
    preds = {}
    for item in a.pred:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise SystemExit(f"--pred {item}: give NAME=DIR with an existing folder of masks")
        preds[name] = Path(folder)
    try:
        cfg = recorded_config(a.data)
        split = resolve_split(a.data, "test")
        plans = rebuild_plans(cfg, split, a.chips)
    except DataError as e:
        raise SystemExit(str(e)) from None
    for name, folder in preds.items():
        missing = [p.chip_id for p in plans if not (folder / f"{p.chip_id}.tif").is_file()]
        if missing:
            raise SystemExit(f"--pred {name}={folder}: no mask for {len(missing)} test chip(s), e.g. {missing[0]}")
    locations = {loc.name: loc for loc in LOCATIONS}
    totals = {name: {} for name in preds}
    t0 = time.perf_counter()
    for p in tqdm(plans, desc="error anatomy", unit="chip"):
        out = render_chip(p.seed, locations[p.location], cfg, canvas=True)
        label = out["label"]
        try:
            check_rebuilt_label(split, p.chip_id, label)
        except DataError as e:
            raise SystemExit(str(e)) from None
        oracle = oracle_label(out["canvas"], cfg) > 0
        for name, folder in preds.items():
            pred = read_label(folder / f"{p.chip_id}.tif") > 0
            for k, v in error_counts(pred, label > 0, oracle, out["alpha"]).items():
                totals[name][k] = totals[name].get(k, 0) + v
    rows = []
    for name, t in totals.items():
        u = max(t["union"], 1)
        row = {"model": name, "chips": len(plans), "jaccard": round(t["inter"] / u, 4),
               "jaccard_vs_oracle": round(t["o_inter"] / max(t["o_union"], 1), 4)}
        row.update({k: round(t[k] / u, 4) for k in ERROR_CLASSES})
        row["oracle_jaccard"] = round(t["oo_inter"] / max(t["oo_union"], 1), 4)
        rows.append(row)
    seconds = time.perf_counter() - t0
    out = write_rows(a.out, rows, COLUMNS)
    table = format_table(rows, COLUMNS)
    print(table)
    command = (f"python benchmarks/error_anatomy.py --data {a.data} --pred "
               + " ".join(f"{n}={f}" for n, f in preds.items()) + (f" --chips {a.chips}" if a.chips else ""))
    Path(out).with_suffix(".md").write_text(
        "# Where the models lose to the label ceiling\n\n"
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {seconds:.0f} s), {len(plans)} test chips; every re-rendered "
        "label equals its label file.\n\n"
        "Shares of each model's union with the label (jaccard + every error column = 1): `margin_*`, where the "
        "model draws the oracle's outline (the annotator rule on the true opacity at its median margin) and the "
        "label another margin; `model_*`, where the model departs from the oracle too, by side (fp: cloud the "
        "oracle does not draw, fn: oracle cloud missed) and by the pixel's true opacity (clear < 0.05 <= thin < "
        f"0.5 <= dense); false cloud on clear pixels within {NEAR_PX} px of the oracle's cloud is `outline`, beyond "
        "it `away`. `oracle_jaccard`: the oracle itself against the labels.\n\n" + table + "\n")
    print(f"-> {out}, {Path(out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
