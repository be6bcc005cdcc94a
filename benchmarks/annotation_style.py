"""Measure how real On Cloud N labels are drawn and compare the generator's label rules with them.

    python benchmarks/annotation_style.py [--real ../shared/data/real_labelled] [--unlabelled ../shared/data/real_chips]
                                          [--n 60] [--annotator margin=10,smooth=3] [--out benchmarks/results]

For the real labelled chips and for ``--n`` generated chips (rendered in memory, seed 0, the train locations),
once per label rule (``annotator``, the default, and ``opacity``, the rule before), it measures with
:mod:`cloudkd.data.labelstyle`: the signed distance of label outlines from the visible-cloud edge, the label
probability by distance from visible cloud, outline roughness, the smallest blobs and holes, visible cloud left
out of the label, and label against visible-cloud fraction. Bright generated ground (snow, sand, roofs) is kept
out of "visible cloud" with the generator's own opacity, since the real chips measured here have none.
Writes ``annotation_style.md`` and ``annotation_style.csv`` under ``--out``; ``--annotator k=v,...`` measures
other annotator parameters (how the defaults were calibrated against the real statistics).
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from cloudkd.data import load_index, read_chip, read_label, resolve_split
from cloudkd.data.synth.annotator import AnnotatorStyle
from cloudkd.data.labelstyle import BRIGHT, DIST_BINS, brightness, chip_style, summarise, visible_cloud
from cloudkd.common.cli import format_table
from cloudkd.data.synth.catalogue import LOCATIONS
from cloudkd.data.synth.sentinel2 import SynthConfig, plan_dataset, render_chip

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def dim_far_label(refl, label, far=40):
    """Labelled pixels that are dim (visible brightness <= BRIGHT) and more than ``far`` px from visible cloud:
    their share of the label and their median spectrum."""
    from scipy import ndimage

    cloud = visible_cloud(refl)
    d = ndimage.distance_transform_edt(~cloud) if cloud.any() else np.full(label.shape, np.inf)
    m = label.astype(bool) & (brightness(refl) <= BRIGHT) & (d > far)
    return m.sum(), np.median(refl[:, m], axis=1) if m.any() else None


def style_row(name, styles, extra=None):
    s = summarise(styles)
    frac = [(st["label_fraction"], st["cloud_fraction"]) for st in styles]
    cov = np.nanmean([st["cloud_in_label"] for st in styles])
    row = {"labels": name, "chips": len(styles), "chips_with_outline": s["n_chips"],
           "visible_cloud_in_label": cov,
           "label_over_cloud_fraction": float(np.sum([f[0] for f in frac]) / max(1e-9, np.sum([f[1] for f in frac]))),
           **{k: v for k, v in s.items() if k != "n_chips"}}
    row.update(extra or {})
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default=str(SHARED / "real_labelled"))
    ap.add_argument("--unlabelled", default=str(SHARED / "real_chips"))
    ap.add_argument("--n", type=int, default=60, help="generated chips per label rule")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--annotator", default="", help="annotator parameters to measure, e.g. margin=12,smooth=4")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()

    rows, chips = [], []
    real = Path(a.real)
    if (real / "train_labels").is_dir():
        idx = load_index(resolve_split(real, "train"))
        styles, dim, dim_spec = [], 0, []
        for cid, f, l in zip(idx.chip_id, idx.features, idx.label):
            refl, lab = read_chip(f), read_label(l)
            st = chip_style(refl, lab)
            styles.append(st)
            n, spec = dim_far_label(refl, lab)
            dim += n
            if spec is not None:
                dim_spec.append(spec)
            chips.append({"chip_id": cid, "label_fraction": st["label_fraction"],
                          "visible_cloud_fraction": st["cloud_fraction"], "visible_cloud_in_label": st["cloud_in_label"],
                          "label_is_visible_cloud": st["label_is_cloud"],
                          "margin_median_px": float(np.median(st["margin"])) if len(st["margin"]) else None,
                          "roughness_label": st["roughness_label"], "roughness_cloud": st["roughness_cloud"],
                          "dim_far_label_px": n, "dim_far_spectrum": None if spec is None else
                          " ".join(f"{v:.3f}" for v in spec)})
        total = sum(st["label_fraction"] for st in styles) * 512 * 512
        rows.append(style_row(f"real ({len(styles)} labelled chips)", styles,
                              {"dim_far_share_of_label": dim / total}))
    else:
        print(f"(no labelled real chips at {real})")
    unl = Path(a.unlabelled)
    if (unl / "test_features").is_dir():
        split = resolve_split(unl / "test_features")
        for cid in split.chip_ids():
            if not any(c["chip_id"] == cid for c in chips):
                refl = read_chip(split.chip_dir(cid))
                chips.append({"chip_id": cid, "visible_cloud_fraction": float(visible_cloud(refl).mean())})

    custom = AnnotatorStyle(**{k: type(getattr(AnnotatorStyle(), k))(v) for k, v in
                               (kv.split("=") for kv in a.annotator.split(",") if kv)})
    variants = [("annotator", AnnotatorStyle())] + ([("annotator*", custom)] if a.annotator else [])
    variants.append(("opacity", None))
    plans = [p for p in plan_dataset(SynthConfig(n_train=a.n, n_test=0, size=a.size)) if p.split == "train"]
    locs = {loc.name: loc for loc in LOCATIONS}
    for name, style in variants:
        cfg = SynthConfig(n_train=a.n, n_test=0, size=a.size, label_style="opacity" if style is None else "annotator",
                          annotator=style or AnnotatorStyle())
        styles, regimes, dim, total = [], [], 0, 0
        for p in plans:
            out = render_chip(p.seed, locs[p.location], cfg)
            refl = out["dn"].astype(np.float32) / 10000
            styles.append(chip_style(refl, out["label"], not_cloud=out["alpha"] < 0.02))
            regimes.append(out["regime"])
            dim += dim_far_label(refl, out["label"])[0]
            total += out["label"].sum()
        label = f"generated, {name}" + (f" ({', '.join(f'{k}={v}' for k, v in dataclasses.asdict(style).items())})"
                                         if style is not None else " (gaussian(opacity, 1.5) >= 0.3)")
        rows.append(style_row(label, styles, {"dim_far_share_of_label": dim / max(1, total)}))
        # like for like: the real chips with an outline are broken cumulus, so compare broken-thick chips too
        thick = [st for st, r in zip(styles, regimes) if r == "broken-thick"]
        rows.append(style_row(f"generated, {name}, broken-thick chips only", thick))

    table = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "annotation_style.csv", index=False)
    show = ["labels", "chips_with_outline", "visible_cloud_in_label", "label_over_cloud_fraction", "margin_p10",
            "margin_p25", "margin_p50", "margin_p75", "margin_p90", "roughness_label", "roughness_cloud",
            "smallest_blob", "blob_p10", "smallest_hole", "largest_left_out", "dim_far_share_of_label"]
    prob = [c for c in table.columns if c.startswith("p_label_")]
    md = ["# Annotation style: real labels against the generator's rules", "",
          "`python benchmarks/annotation_style.py " + (f"--annotator {a.annotator} " if a.annotator else "") +
          f"--n {a.n}`; distances in pixels (10 m); visible cloud = visible brightness > {BRIGHT} (smoothed 1 px).",
          "", format_table(rows, show), "",
          "Label probability outside the visible cloud by distance to it (px bins " +
          ", ".join(f"{lo}-{hi}" for lo, hi in zip(DIST_BINS[:-2], DIST_BINS[1:-1])) + f", {DIST_BINS[-2]}+):", "",
          format_table(rows, ["labels"] + prob), "",
          "Real chips one by one:", "", format_table(chips, list(pd.DataFrame(chips).columns))]
    (out / "annotation_style.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
