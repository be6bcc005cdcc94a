"""The ceiling the generated benchmark's labels allow: how well two independent draws of the annotator agree, and
what the annotator rule at its median margin on the true cloud scores, against the test split's labels.

    python benchmarks/label_ceiling.py --data data/generated/demo [--streams 2 3 4 5] [--chips N] \
        [--out benchmarks/results/label_ceiling.csv]
    python benchmarks/label_ceiling.py [--n-train 160] [--n-test 80] [--size 512] [--seed 0]

The generator labels each chip with a model of real annotators, who draw a random margin around the cloud they see
(:mod:`cloudkd.data.synth.annotator`), so a test label is one draw among equally right outlines. Each test chip is
rendered again (in memory, nothing is written) from its plan, and its labels come from the one label rule on that
render's canvas (:mod:`cloudkd.data.synth.ceiling`):

* ``two_annotators``: the dataset's label (annotator stream 1) against a second draw (stream 2) of the same
  annotator, same image, crop and nodata wedge; ``two_annotators_mean``: the mean and sd over ``--streams``;
* ``oracle_median_margin``: the annotator rule on the true opacity with its margin fixed at its median
  (``margin_spread = margin_wobble = 0``), the best a deterministic model that knows the true cloud could draw.

Each is scored with the leaderboard's global Jaccard (draw or oracle = prediction, dataset label = label). With
``--data`` the config is the one the dataset recorded (``synth.json``) and every re-rendered label must equal the
label file on disk, pixel for pixel, which proves the chips rebuilt are the dataset's; without it, the demo's
config (``DemoConfig().synth_config()``) with the options' changes. ``--chips N`` takes the first N test chips
(by chip id). Writes the CSV and a Markdown table beside it (``.md``).
"""

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm.auto import tqdm

from _results import write_rows
from cloudkd.common.cli import format_table
from cloudkd.data import DataError, resolve_split
from cloudkd.data.synth.ceiling import (COLUMNS, DATASET, ceiling_labels, ceiling_rows, check_rebuilt_label,
                                        rebuild_plans)
from cloudkd.data.synth.catalogue import LOCATIONS
from cloudkd.data.synth.sentinel2 import recorded_config
from cloudkd.demo import DemoConfig


def main():
    demo = DemoConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a generated dataset: its recorded config, and its test labels to check against")
    ap.add_argument("--n-train", type=int, default=demo.n_train, help="without --data (the test plans depend on it)")
    ap.add_argument("--n-test", type=int, default=demo.n_test, help="without --data")
    ap.add_argument("--size", type=int, default=demo.size, help="without --data")
    ap.add_argument("--seed", type=int, default=demo.seed, help="without --data")
    ap.add_argument("--streams", nargs="+", type=int, default=[2, 3, 4, 5],
                    help="the other annotator draws' random streams (the dataset's is 1); the first is the pair's")
    ap.add_argument("--chips", type=int, default=0, help="only the first N test chips (by chip id); 0 = all")
    ap.add_argument("--out", default="benchmarks/results/label_ceiling.csv")
    a = ap.parse_args()

    if a.data:
        try:
            cfg = recorded_config(a.data)
            split = resolve_split(a.data, "test")
        except DataError as e:
            raise SystemExit(str(e)) from None
        source = f"{a.data} (synth.json)"
    else:
        cfg = replace(demo, n_train=a.n_train, n_test=a.n_test, size=a.size, seed=a.seed).synth_config()
        split, source = None, "the demo's config with the options' changes (no dataset read)"
    try:
        plans = rebuild_plans(cfg, split, a.chips)
    except DataError as e:
        raise SystemExit(str(e)) from None
    locations = {loc.name: loc for loc in LOCATIONS}

    def labels():
        for p in tqdm(plans, desc="label ceiling", unit="chip"):
            lab = ceiling_labels(p.seed, locations[p.location], cfg, a.streams)
            if split is not None:
                check_rebuilt_label(split, p.chip_id, lab[DATASET])
            yield lab

    t0 = time.perf_counter()
    try:
        rows = ceiling_rows(labels())
    except DataError as e:
        raise SystemExit(str(e)) from None
    seconds = time.perf_counter() - t0
    checked = (f"all {len(plans)} re-rendered labels equal the label files in {split.labels_dir}, pixel for pixel"
               if split is not None else "not checked against a dataset (no --data)")
    out = write_rows(a.out, [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                     COLUMNS)
    table = format_table(rows, COLUMNS)
    print(table)
    print(f"config: {source}: {asdict(cfg)}\nlabels: {checked}; {seconds:.0f} s")

    command = "python benchmarks/label_ceiling.py " + " ".join(
        ([f"--data {a.data}"] if a.data else [f"--n-train {a.n_train} --n-test {a.n_test} --size {a.size} "
                                              f"--seed {a.seed}"])
        + [f"--streams {' '.join(map(str, a.streams))}"] + ([f"--chips {a.chips}"] if a.chips else []))
    md = Path(out).with_suffix(".md")
    md.write_text(
        "# The label ceiling of the generated benchmark\n\n"
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {seconds:.0f} s)\n\n"
        f"{len(plans)} test chips of {source}: {cfg.n_train} train + {cfg.n_test} test chips, {cfg.size} px, "
        f"seed {cfg.seed}, difficulty {cfg.difficulty}, ground gain min {cfg.ground_gain_min:g}, "
        f"annotator {asdict(cfg.annotator)}; {checked}.\n\n"
        "Global Jaccard, precision and recall against the dataset's labels (annotator stream 1): "
        f"`two_annotators` is a second draw (stream {a.streams[0]}) of the same annotator on the same images, "
        f"`two_annotators_mean` the mean over streams {', '.join(map(str, a.streams))} (sd: the sample standard "
        "deviation of their Jaccards), `oracle_median_margin` the annotator rule on the true opacity with its margin "
        "fixed at its median (margin_spread = margin_wobble = 0).\n\n"
        f"{table}\n")
    print(f"-> {out}, {md}")


if __name__ == "__main__":
    main()
