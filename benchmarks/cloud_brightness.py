"""How bright is the cloud? Mean visible reflectance of cloud pixels, real against generated.

    python benchmarks/cloud_brightness.py [--real-labelled ../shared/data/real_labelled] \
        [--real-unlabelled ../shared/data/real_chips ../shared/data/real_unlabelled] \
        [--generated data/generated/demo] [--work runs/cloud_brightness]

Sources of cloud pixels (nodata left out; brightness = mean(B02, B03, B04) reflectance, as in
:mod:`cloudkd.evaluate.bands`):

* ``real labels``: the official labels of the labelled real chips (one scene, Chifunfu);
* ``real peer``: the cloud the ukis-csmask peer (a model trained on real L2A labels; optional) marks on the
  unlabelled real chips (Eswatini, Eritrea, Kimberley and the five ``real_chips``): the only view of real cloud
  beyond one scene that needs no label here;
* ``generated train labels`` / ``generated test labels``: the generator's annotator labels of the demo dataset.

With ``--student RUN`` (repeatable): each student run's masks on the unlabelled real chips are compared with the
peer's, band by band (recall of the peer's cloud, precision against it: ``cloud_brightness_vs_peer.csv``), the
nearest thing to a real-chip check beyond one scene that needs no label (the peer is a model, not a label).

Writes ``benchmarks/results/cloud_brightness.csv`` (source, band, cloud pixels, share) and ``.md`` with the
command and date, a finer histogram (0.05 reflectance bins) in ``cloud_brightness_hist.csv``, and
``docs/cloud_brightness.png``. Per chip, ``cloud_brightness_chips.csv`` lists the cloud pixels' median brightness
(for the generator's per-chip cloud reflectance, issue 30).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import write_rows
from cloudkd.common.cli import format_table
from cloudkd.common.viz import save_figure
from cloudkd.data import read_chip, read_label, resolve_split
from cloudkd.data.chips import read_mask
from cloudkd.evaluate.bands import BAND_NAMES, band_counts, visible_brightness

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BINS = np.arange(0.0, 1.55, 0.05)


def cloud_pixels(features_dir: Path, masks: dict, source: str, chip_rows: list):
    """Band counts and fine histogram of the cloud pixels of every chip (``masks``: chip id -> mask file)."""
    counts = np.zeros((len(BAND_NAMES), 4), np.int64)
    hist = np.zeros(len(BINS) - 1, np.int64)
    for cid, mask_path in masks.items():
        refl = read_chip(features_dir / cid)
        bright, valid = visible_brightness(refl)
        cloud = read_mask(mask_path, refl.shape[1:]) > 0
        counts += band_counts(bright, valid, cloud, None)
        v = bright[cloud & valid]
        hist += np.histogram(np.clip(v, 0, BINS[-1] - 1e-6), BINS)[0]
        clear = bright[~cloud & valid]
        chip_rows.append({"source": source, "chip_id": cid, "cloud_frac": round(float(cloud[valid].mean()), 4)
                          if valid.any() else None,
                          "cloud_median": round(float(np.median(v)), 4) if v.size else None,
                          "cloud_p10": round(float(np.percentile(v, 10)), 4) if v.size else None,
                          "cloud_p90": round(float(np.percentile(v, 90)), 4) if v.size else None,
                          "clear_median": round(float(np.median(clear)), 4) if clear.size else None})
    return counts[:, 0], hist


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-labelled", default=str(SHARED / "real_labelled"))
    ap.add_argument("--real-unlabelled", nargs="*", default=[str(SHARED / "real_chips"),
                                                             str(SHARED / "real_unlabelled")])
    ap.add_argument("--generated", default="data/generated/demo")
    ap.add_argument("--work", default="runs/cloud_brightness", help="where the peer's masks are written")
    ap.add_argument("--out", default="benchmarks/results/cloud_brightness.csv")
    ap.add_argument("--png", default="docs/cloud_brightness.png")
    ap.add_argument("--student", action="append", default=[], help="student run(s) to compare with the peer")
    a = ap.parse_args()
    vs_peer = []
    sources = {}
    chip_rows = []
    if Path(a.real_labelled).is_dir():
        split = resolve_split(a.real_labelled, "train")
        sources["real labels (Chifunfu)"] = cloud_pixels(
            split.features_dir, {c: split.labels_dir / f"{c}.tif" for c in split.chip_ids()}, "real labels",
            chip_rows)
    from cloudkd.teacher import peer

    if peer.available():
        for root in a.real_unlabelled:
            if not Path(root).is_dir():
                continue
            split = resolve_split(root, "test")
            out = Path(a.work) / f"peer_{Path(root).name}"
            if not out.is_dir() or len(list(out.glob("*.tif"))) < len(split.chip_ids()):
                peer.predict_folder(split.features_dir, out, progress=False)
            name = f"real peer ({Path(root).name})"
            sources[name] = cloud_pixels(split.features_dir, {c: out / f"{c}.tif" for c in split.chip_ids()},
                                         name, chip_rows)
            for run in a.student:
                from cloudkd.evaluate.bands import bands_of_folders
                from cloudkd.student.predict import predict_folder
                from cloudkd.student.runs import load_student, recorded_rule

                pred = Path(a.work) / f"{Path(run).name}_{Path(root).name}"
                threshold, dilate = recorded_rule(run)  # the run's whole prediction rule
                predict_folder(load_student(run), split.features_dir, pred, threshold=threshold, dilate=dilate,
                               progress=False)
                t = bands_of_folders(split.features_dir, out, {str(run): pred}, split.chip_ids())
                t.insert(0, "chips", Path(root).name)
                vs_peer += t[t.method != "label"].round(4).to_dict("records")
    else:
        print(f"(the peer is not installed: {peer.INSTALL}; its rows are left out)")
    for part in ("train", "test"):
        split = resolve_split(a.generated, part)
        sources[f"generated {part} labels"] = cloud_pixels(
            split.features_dir, {c: split.labels_dir / f"{c}.tif" for c in split.chip_ids()}, f"generated {part}",
            chip_rows)
    rows = []
    for name, (per_band, _) in sources.items():
        total = per_band.sum()
        for band, n in zip(BAND_NAMES, per_band):
            rows.append({"source": name, "band": band, "cloud_px": int(n),
                         "share": round(n / total, 4) if total else None})
    out = Path(a.out)
    write_rows(out, rows)
    hist_rows = [{"source": name, "bin_lo": round(float(lo), 2), "cloud_px": int(n)}
                 for name, (_, hist) in sources.items() for lo, n in zip(BINS[:-1], hist)]
    write_rows(out.with_name(out.stem + "_hist.csv"), hist_rows)
    write_rows(out.with_name(out.stem + "_chips.csv"), chip_rows)
    if vs_peer:
        write_rows(out.with_name(out.stem + "_vs_peer.csv"), vs_peer)
        print(format_table(vs_peer, list(vs_peer[0])))
    wide = pd.DataFrame(rows).pivot(index="source", columns="band", values="share")[list(BAND_NAMES)]
    wide = wide.loc[list(sources)]
    table = [{"source": s, **{b: wide.loc[s, b] for b in BAND_NAMES},
              "cloud px": int(sources[s][0].sum())} for s in sources]
    md = format_table(table, ["source", *BAND_NAMES, "cloud px"])
    print(md)
    out.with_suffix(".md").write_text(
        f"`python benchmarks/cloud_brightness.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')})\n\n"
        "Share of the cloud pixels by mean visible reflectance (B02-B04):\n\n" + md + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    centres = (BINS[:-1] + BINS[1:]) / 2
    for name, (_, hist) in sources.items():
        if hist.sum():
            ax.plot(centres, hist / hist.sum(), "-o", ms=3, label=f"{name} ({hist.sum():,} px)")
    for lo in (0.2, 0.35, 0.6):
        ax.axvline(lo, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("mean visible reflectance of cloud pixels")
    ax.set_ylabel("share of the cloud pixels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    print(save_figure(fig, a.png))


if __name__ == "__main__":
    main()
