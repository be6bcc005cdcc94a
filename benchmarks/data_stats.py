"""Compare generated chips with the five real On Cloud N chips: band medians, cloud and clear brightness.

    python benchmarks/data_stats.py --data data/generated/demo [--real ../shared/data/real_chips]

Prints the table quoted in data/README.md, and the per-band mean / std of the generated train split (from which
the fixed normalisation constants in cloudkd/data/normalise.py were rounded).
"""

import argparse
from pathlib import Path

import numpy as np

from cloudkd.data import BANDS, load_index, read_chip, read_label, resolve_split


def fmt(v):
    return " ".join(f"{x:6.3f}" for x in v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real_chips"))
    ap.add_argument("--max-chips", type=int, default=200)
    a = ap.parse_args()
    print(f"{'':34s} {'  '.join(f'{b:>5s}' for b in BANDS)}")

    real = Path(a.real)
    if (real / "test_features").is_dir():
        split = resolve_split(real / "test_features")
        for cid in split.chip_ids():
            x = read_chip(split.chip_dir(cid))
            bright = x[:, x[:3].mean(0) > 0.3]
            print(f"real {cid} median{'':21s} {fmt(np.median(x, axis=(1, 2)))}   visible > 0.3: "
                  f"{fmt(np.median(bright, axis=1))} ({bright.shape[1] / x[0].size:.0%})")
        allx = np.stack([read_chip(split.chip_dir(c)) for c in split.chip_ids()])
        print(f"real, all 5 chips: median{'':11s} {fmt(np.median(allx, axis=(0, 2, 3)))}")
        over = read_chip(split.chip_dir("adxp"))
        print(f"real thick cloud (adxp, overcast) median  {fmt(np.median(over, axis=(1, 2)))}")
        bright = allx.transpose(1, 0, 2, 3).reshape(4, -1)
        b = bright[:, bright[:3].mean(0) > 0.3]
        print(f"real pixels with visible > 0.3: median   {fmt(np.median(b, axis=1))}  ({b.shape[1] / bright.shape[1]:.0%})")
    else:
        print(f"(real chips not found at {real})")

    idx = load_index(resolve_split(a.data, "train"))
    idx = idx.iloc[: a.max_chips]
    xs, ys = [], []
    for f, l in zip(idx.features, idx.label):
        xs.append(read_chip(f)[:, ::4, ::4])
        ys.append(read_label(l)[::4, ::4].astype(bool))
    x = np.stack(xs).transpose(1, 0, 2, 3).reshape(4, -1)
    y = np.stack(ys).ravel()
    valid = x.max(0) > 0
    print(f"generated ({len(idx)} train chips): median{'':7s} {fmt(np.median(x[:, valid], axis=1))}")
    print(f"generated labelled cloud: median{'':10s} {fmt(np.median(x[:, y & valid], axis=1))}  "
          f"(cloud fraction {y[valid].mean():.0%})")
    print(f"generated clear: median{'':19s} {fmt(np.median(x[:, ~y & valid], axis=1))}")
    b = x[:, valid & (x[:3].mean(0) > 0.3)]
    print(f"generated pixels with visible > 0.3: med. {fmt(np.median(b, axis=1))}  ({b.shape[1] / valid.sum():.0%})")
    xc = np.clip(x[:, valid], 0, 1.6)
    print(f"generated mean (clipped at 1.6){'':5s} {fmt(xc.mean(axis=1))}")
    print(f"generated std  (clipped at 1.6){'':5s} {fmt(xc.std(axis=1))}")


if __name__ == "__main__":
    main()
