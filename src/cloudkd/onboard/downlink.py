"""``cloudkd downlink``: what a cloud mask saves on the downlink, and what it throws away by mistake.

Two on-board policies, from predicted masks (one per chip, or a scene mask cut into chip-size tiles):

* **chip policy** at cloud-cover threshold ``t``: a chip whose predicted cloud fraction exceeds ``t`` is not
  sent. Reported per threshold: the share of chips and of pixels discarded, the bytes saved (each chip costs
  its band files' bytes, or 4 bands x H x W x 2 bytes of raw uint16), and, when labels exist, the share of
  truly clear pixels that were discarded with their chips (``clear_lost``).
* **pixel policy**: every pixel predicted cloudy is dropped (e.g. zeroed before compression): the share of
  pixels dropped and, with labels, the share of clear pixels wrongly dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..common.errors import DataError
from ..data.chips import read_label, read_mask

DEFAULT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass
class ChipStats:
    """Per chip: pixels, predicted cloud pixels, bytes, and (with labels) true-clear pixels and those
    predicted cloudy."""
    chip_id: str
    pixels: int
    cloud_pred: int
    bytes: int
    clear_true: Optional[int] = None
    clear_pred_cloud: Optional[int] = None


def chip_stats(pred: np.ndarray, chip_id: str, nbytes: Optional[int] = None,
               label: Optional[np.ndarray] = None) -> ChipStats:
    pred = np.asarray(pred) > 0
    if label is not None and np.shape(label) != pred.shape:
        raise DataError(f"{chip_id}: label shape {np.shape(label)} differs from the mask's {pred.shape}")
    clear = None if label is None else ~(np.asarray(label) > 0)
    return ChipStats(chip_id, int(pred.size), int(pred.sum()), int(nbytes if nbytes is not None else 4 * pred.size * 2),
                     None if clear is None else int(clear.sum()),
                     None if clear is None else int((clear & pred).sum()))


def stats_from_folders(pred_dir: os.PathLike | str, labels_dir: Optional[os.PathLike | str] = None,
                       features_dir: Optional[os.PathLike | str] = None) -> List[ChipStats]:
    """ChipStats for every mask in ``pred_dir``; bytes from the chip's band files when ``features_dir`` is given."""
    pred_dir = Path(pred_dir)
    ids = sorted(p.stem for p in pred_dir.glob("*.tif") if not p.name.startswith("."))
    if not ids:
        raise DataError(f"{pred_dir}: no predicted masks (*.tif)")
    out = []
    for cid in ids:
        nbytes = None
        if features_dir is not None:
            chip = Path(features_dir) / cid
            if not chip.is_dir():
                raise DataError(f"{chip}: no chip folder for mask {cid}.tif")
            nbytes = sum(f.stat().st_size for f in chip.glob("*.tif"))
        label = read_label(Path(labels_dir) / f"{cid}.tif") if labels_dir is not None else None
        out.append(chip_stats(read_mask(pred_dir / f"{cid}.tif"), cid, nbytes, label))
    return out


def stats_from_scene(mask: np.ndarray, tile: int = 512, label: Optional[np.ndarray] = None,
                     bytes_per_pixel: float = 8.0) -> List[ChipStats]:
    """A scene mask cut into ``tile`` x ``tile`` chips (edge tiles smaller); raw 4 x uint16 bytes per pixel."""
    h, w = mask.shape
    out = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            m = mask[y:y + tile, x:x + tile]
            lab = None if label is None else label[y:y + tile, x:x + tile]
            out.append(chip_stats(m, f"r{y}_c{x}", int(m.size * bytes_per_pixel), lab))
    return out


def summarise(stats: Sequence[ChipStats], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict:
    """The chip policy per threshold and the pixel policy (see the module docstring)."""
    if not stats:
        raise DataError("no chips to summarise")
    pixels = np.array([s.pixels for s in stats], np.int64)
    cloud = np.array([s.cloud_pred for s in stats], np.int64)
    nbytes = np.array([s.bytes for s in stats], np.int64)
    frac = cloud / pixels
    labelled = all(s.clear_true is not None for s in stats)
    clear = np.array([s.clear_true for s in stats], np.int64) if labelled else None
    rows = []
    for t in thresholds:
        drop = frac > t
        row = {"threshold": float(t), "chips_discarded": float(drop.mean()),
               "pixels_discarded": float(pixels[drop].sum() / pixels.sum()),
               "bytes_saved": int(nbytes[drop].sum()), "bytes_saved_share": float(nbytes[drop].sum() / nbytes.sum())}
        if labelled:
            row["clear_lost"] = float(clear[drop].sum() / clear.sum()) if clear.sum() else 0.0
        rows.append(row)
    pixel_policy = {"pixels_discarded": float(cloud.sum() / pixels.sum())}
    if labelled:
        wrong = sum(s.clear_pred_cloud for s in stats)
        pixel_policy["clear_lost"] = float(wrong / clear.sum()) if clear.sum() else 0.0
    return {"n_chips": len(stats), "pixels": int(pixels.sum()), "bytes": int(nbytes.sum()),
            "mean_cloud_fraction": float(frac.mean()), "labelled": labelled, "chip_policy": rows,
            "pixel_policy": pixel_policy}


def plot(summary: Dict, path: os.PathLike | str) -> Path:
    import matplotlib.pyplot as plt  # the backend stays the user's: save_figure writes the file and closes it

    from ..common.viz import save_figure

    rows = summary["chip_policy"]
    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(t, [100 * r["bytes_saved_share"] for r in rows], "o-", label="downlink bytes saved")
    ax.plot(t, [100 * r["chips_discarded"] for r in rows], "s--", label="chips discarded")
    if summary["labelled"]:
        ax.plot(t, [100 * r["clear_lost"] for r in rows], "^-", color="tab:red", label="clear pixels lost")
    ax.set_xlabel("cloud-cover threshold (chip discarded above it)")
    ax.set_ylabel("%")
    ax.set_title(f"downlink savings, {summary['n_chips']} chips")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
