"""Apply a fitted threshold model to the five real On Cloud N chips and compare cloud fractions.

    python benchmarks/real_chips.py --model runs/demo/threshold.json [--real ../shared/data/real_chips]

The real chips have no label files, but the official cloud-pixel counts of three are known (see the real
chips' README): adwp 48 %, adwu 64 %, adwz 100 %. Writes masks and a PNG under runs/real_chips/.
"""

import argparse
from pathlib import Path

from cloudkd.baselines.threshold import ThresholdModel, predict_folder
from cloudkd.data import read_mask, resolve_split
from cloudkd.viz import plot_chips

KNOWN = {"adwp": 125_644 / 262_144, "adwu": 166_896 / 262_144, "adwz": 1.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/threshold.json")
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real_chips"))
    ap.add_argument("--out", default="runs/real_chips")
    a = ap.parse_args()
    split = resolve_split(Path(a.real) / "test_features")
    model = ThresholdModel.load(a.model)
    pred = Path(a.out) / "threshold"
    predict_folder(model, split.features_dir, pred)
    print(f"{'chip':6s} {'threshold cloud %':>18s} {'official label %':>17s}")
    for cid in split.chip_ids():
        frac = read_mask(pred / f"{cid}.tif").mean()
        known = f"{100 * KNOWN[cid]:.0f}" if cid in KNOWN else "unknown"
        print(f"{cid:6s} {100 * frac:18.1f} {known:>17s}")
    print(plot_chips(split, split.chip_ids(), Path(a.out) / "threshold.png", {"threshold": pred},
                     title="thresholding on the five real chips"))


if __name__ == "__main__":
    main()
