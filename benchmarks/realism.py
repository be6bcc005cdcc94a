"""Generated imagery against real chips: histograms of cloud brightness, thin cloud, shadow and ground, and a PNG.

    python benchmarks/realism.py --data data/generated/demo [--real ../shared/data/real_labelled]
                                 [--unlabelled ../shared/data/real_chips] [--png docs/real_vs_generated.png]
                                 [--md benchmarks/results/realism.md]

Pooled over pixels, the same way for real and generated chips (labels included; the unlabelled real chip akny
contributes to the clear-ground rows only, counted as clear where its visible brightness is <= 0.3):

* cloud brightness: the distribution of visible brightness mean(B02, B03, B04) over labelled cloud;
* thin cloud: the share of labelled cloud that is dim (brightness <= 0.3), where ground shows through or a
  deck is shaded;
* shadow: the share of clear pixels darker than 0.6 x their chip's clear median brightness (cloud shadows and
  shaded ground);
* ground: the distribution of visible brightness and NDVI over clear pixels.

The PNG shows real chips and generated chips (one of each regime) side by side, label outlines in yellow, and
the brightness histograms.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cloudkd.data import load_index, read_chip, read_label, resolve_split
from cloudkd.data.labelstyle import BRIGHT, brightness, outline
from cloudkd.common.cli import format_table
from cloudkd.common.viz import save_figure, true_colour

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
B_EDGES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 10.0)
NDVI_EDGES = (-1.0, 0.0, 0.2, 0.4, 0.6, 1.0)


def pixel_stats(chips):
    """Pooled statistics of (reflectance, label) pairs (label may be None: clear = brightness <= BRIGHT)."""
    cloud_b, clear_b, clear_ndvi, dark, n_clear = [], [], [], 0, 0
    for refl, label in chips:
        valid = refl.max(axis=0) > 0
        b = brightness(refl)
        lab = (b > BRIGHT) if label is None else label.astype(bool)
        if label is not None:
            cloud_b.append(b[lab & valid])
        clear = ~lab & valid
        if clear.sum() > 1000:
            cb = b[clear]
            dark += int((cb < 0.6 * np.median(cb)).sum())
            n_clear += int(clear.sum())
            clear_b.append(cb)
            nir, red = refl[3][clear], refl[2][clear]
            clear_ndvi.append((nir - red) / np.maximum(nir + red, 1e-6))
    cloud_b = np.concatenate(cloud_b) if cloud_b else np.zeros(0)
    clear_b, clear_ndvi = np.concatenate(clear_b), np.concatenate(clear_ndvi)
    hist = lambda v, e: np.histogram(np.clip(v, e[0], e[-1] - 1e-6), bins=e)[0] / max(1, len(v))  # noqa: E731
    return {"cloud_b": cloud_b, "clear_b": clear_b, "cloud_hist": hist(cloud_b, B_EDGES),
            "thin_share": float((cloud_b <= BRIGHT).mean()) if len(cloud_b) else float("nan"),
            "shadow_share": dark / max(1, n_clear), "clear_hist": hist(clear_b, B_EDGES),
            "ndvi_hist": hist(clear_ndvi, NDVI_EDGES), "clear_b_median": float(np.median(clear_b)),
            "cloud_b_median": float(np.median(cloud_b)) if len(cloud_b) else float("nan")}


def rows_of(name, st):
    row = {"chips": name, "labelled cloud: median brightness": st["cloud_b_median"],
           "thin (<= 0.3) share of cloud": st["thin_share"], "shadow share of clear": st["shadow_share"],
           "clear: median brightness": st["clear_b_median"]}
    for lo, hi, v in zip(B_EDGES[:-1], B_EDGES[1:], st["cloud_hist"]):
        row[f"cloud b {lo}-{hi if hi < 10 else ''}"] = v
    ground = {"chips": name}
    for lo, hi, v in zip(B_EDGES[:-1], B_EDGES[1:], st["clear_hist"]):
        ground[f"clear b {lo}-{hi if hi < 10 else ''}"] = v
    for lo, hi, v in zip(NDVI_EDGES[:-1], NDVI_EDGES[1:], st["ndvi_hist"]):
        ground[f"NDVI {lo}-{hi}"] = v
    return row, ground


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--real", default=str(SHARED / "real_labelled"))
    ap.add_argument("--unlabelled", default=str(SHARED / "real_chips"))
    ap.add_argument("--max-chips", type=int, default=160)
    ap.add_argument("--png", default="runs/realism/real_vs_generated.png")
    ap.add_argument("--md", default=None)
    a = ap.parse_args()

    real_idx = load_index(resolve_split(a.real, "train"))
    real = [(read_chip(f), read_label(l)) for f, l in zip(real_idx.features, real_idx.label)]
    extra = []
    unl = Path(a.unlabelled) / "test_features"
    if unl.is_dir():
        split = resolve_split(unl)
        extra = [(read_chip(split.chip_dir(c)), None) for c in split.chip_ids() if c not in set(real_idx.chip_id)]
    gen_split = resolve_split(a.data, "train")
    gen_idx = load_index(gen_split).iloc[: a.max_chips]
    gen = [(read_chip(f), read_label(l)) for f, l in zip(gen_idx.features, gen_idx.label)]
    st_real, st_gen = pixel_stats(real + extra), pixel_stats(gen)
    r1, g1 = rows_of(f"real ({len(real)} labelled + {len(extra)} unlabelled)", st_real)
    r2, g2 = rows_of(f"generated ({len(gen)} chips of {a.data})", st_gen)
    md = ["`python benchmarks/realism.py --data " + a.data + "`", "", format_table([r1, r2], list(r1)), "",
          format_table([g1, g2], list(g1))]
    print("\n".join(md))
    if a.md:
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text("\n".join(md) + "\n")

    # the figure: real chips, then one generated chip of each regime, then the histograms
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = pd.read_csv(gen_split.root / "train_synth_info.csv") if (gen_split.root / "train_synth_info.csv").is_file() \
        else pd.DataFrame({"chip_id": gen_idx.chip_id, "regime": "?"})
    picks = []
    for regime in ("broken-thick", "broken-mixed", "broken-thin", "overcast", "clear"):
        ids = [c for c in info[info.regime == regime].chip_id if c in set(gen_idx.chip_id)]
        if ids:
            picks.append((regime, ids[len(ids) // 2]))
    real_row = [(f"real {c}", refl, lab) for c, (refl, lab) in zip(real_idx.chip_id, real)] + \
        [("real akny (no label)", refl, None) for refl, _ in extra[:1]]
    by_id = dict(zip(gen_idx.chip_id, gen))
    gen_row = [(f"generated {c} ({r})", *by_id[c]) for r, c in picks]
    ncol = max(len(real_row), len(gen_row), 4)
    fig = plt.figure(figsize=(2.8 * ncol, 8.8))
    grid = fig.add_gridspec(3, ncol)
    for r, row in enumerate((real_row, gen_row)):
        for c, (title, refl, lab) in enumerate(row[:ncol]):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            rgb = true_colour(refl)
            if lab is not None:  # the outline, 3 px wide so it survives the downscaling
                from scipy import ndimage

                rgb[ndimage.binary_dilation(outline(lab.astype(bool)), iterations=1)] = (1.0, 0.9, 0.0)
            ax.imshow(rgb)
            ax.set_title(title, fontsize=7)
    half = ncol // 2
    for j, (key, title) in enumerate([("cloud_b", "visible brightness of labelled cloud"),
                                      ("clear_b", "visible brightness of clear pixels")]):
        ax = fig.add_subplot(grid[2, j * half:(j + 1) * half if j == 0 else ncol])
        for st, name in ((st_real, "real"), (st_gen, "generated")):
            ax.hist(np.clip(st[key], 0, 1.5), bins=75, range=(0, 1.5), density=True, histtype="step", label=name)
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("real On Cloud N chips (top) and generated chips (middle), label outlines in yellow", fontsize=9)
    fig.tight_layout()
    print(save_figure(fig, a.png, dpi=70))


if __name__ == "__main__":
    main()
