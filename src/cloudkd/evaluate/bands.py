"""Cloud by brightness: how much of the labelled cloud each method finds, band by band of visible reflectance.

Real annotators outline whole cloud bodies, dim decks and thin cloud included, not only bright tops. A global
Jaccard hides which cloud a model misses; these tables show it. A pixel's brightness is its mean visible
reflectance, ``(B02 + B03 + B04) / 3`` from the one chip reader (:func:`cloudkd.data.chips.read_chip`); nodata
pixels (every band 0) are left out. For every band of :data:`BRIGHTNESS_BANDS`:

* ``label_px`` and ``label_share``: labelled cloud pixels in the band, and their share of all labelled cloud;
* ``recall``: the share of the band's labelled cloud the method marks cloud;
* ``pred_px`` and ``precision``: the method's cloud pixels in the band, and the share of them labelled cloud.

Rates with nothing to count are NaN (empty in the CSV).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..common.errors import DataError

#: the bands of mean visible reflectance (lower bound inclusive, upper exclusive): dim cloud and clear ground,
#: the 0.2-0.35 decks real annotators outline, ordinary cloud, bright tops
BRIGHTNESS_BANDS: Tuple[Tuple[float, float], ...] = ((0.0, 0.2), (0.2, 0.35), (0.35, 0.6), (0.6, np.inf))
BAND_NAMES: Tuple[str, ...] = ("<0.2", "0.2-0.35", "0.35-0.6", ">0.6")


def visible_brightness(refl: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean visible reflectance of a (4, H, W) reflectance chip (bands B02, B03, B04, B08), and its valid pixels
    (not nodata)."""
    from ..baselines.threshold import spectral_features  # the thresholding rule's brightness, the same quantity

    refl = np.asarray(refl, dtype=np.float32)
    valid = np.any(refl != 0, axis=0) & np.all(np.isfinite(refl), axis=0)
    return spectral_features(refl)[0], valid


def band_index(brightness: np.ndarray) -> np.ndarray:
    """The band (0 .. len(BRIGHTNESS_BANDS) - 1) of every pixel."""
    edges = np.array([lo for lo, _ in BRIGHTNESS_BANDS[1:]], dtype=np.float32)
    return np.searchsorted(edges, brightness, side="right")


def band_counts(brightness: np.ndarray, valid: np.ndarray, label: Optional[np.ndarray],
                pred: Optional[np.ndarray]) -> np.ndarray:
    """Pixel counts per band, shape (bands, 4): labelled cloud, labelled cloud also predicted, predicted cloud,
    predicted cloud also labelled. ``label`` or ``pred`` may be None (their columns stay 0)."""
    n = len(BRIGHTNESS_BANDS)
    b = band_index(brightness)[valid]
    lab = np.asarray(label, bool)[valid] if label is not None else None
    prd = np.asarray(pred, bool)[valid] if pred is not None else None
    out = np.zeros((n, 4), np.int64)
    if lab is not None:
        out[:, 0] = np.bincount(b[lab], minlength=n)
    if lab is not None and prd is not None:
        both = np.bincount(b[lab & prd], minlength=n)
        out[:, 1] = both
        out[:, 3] = both
    if prd is not None:
        out[:, 2] = np.bincount(b[prd], minlength=n)
    return out


def band_rows(counts: np.ndarray, rates: bool = True, **keys) -> List[dict]:
    """Table rows of summed :func:`band_counts` (one per band), each starting with ``keys``; ``rates=False`` (the
    labels alone, no prediction) leaves recall and precision NaN."""
    total_label = counts[:, 0].sum()
    rows = []
    for (name, c) in zip(BAND_NAMES, counts):
        label_px, hit, pred_px, right = (int(v) for v in c)
        rows.append({**keys, "band": name, "label_px": label_px,
                     "label_share": label_px / total_label if total_label else float("nan"),
                     "recall": hit / label_px if label_px and rates else float("nan"), "pred_px": pred_px,
                     "precision": right / pred_px if pred_px and rates else float("nan")})
    return rows


def _read_mask(path: Path, shape, what: str) -> np.ndarray:
    from ..data.chips import read_mask

    return read_mask(path, shape, what=what) > 0


def bands_of_folders(features_dir: os.PathLike | str, labels_dir: Optional[os.PathLike | str],
                     pred_dirs: Dict[str, os.PathLike | str], chips: Sequence[str]) -> pd.DataFrame:
    """Band rows for every method (``pred_dirs``: name -> masks folder) on ``chips`` of ``features_dir``, against
    the labels in ``labels_dir``. Without labels (``labels_dir`` None) only the predicted cloud is counted (its
    ``pred_px`` per band: the brightness of what a method calls cloud on unlabelled chips)."""
    from ..data.chips import read_chip

    features_dir = Path(features_dir)
    sums = {name: np.zeros((len(BRIGHTNESS_BANDS), 4), np.int64) for name in pred_dirs}
    label_only = np.zeros((len(BRIGHTNESS_BANDS), 4), np.int64)
    for cid in chips:
        refl = read_chip(features_dir / cid)
        bright, valid = visible_brightness(refl)
        label = _read_mask(Path(labels_dir) / f"{cid}.tif", refl.shape[1:], "label") if labels_dir is not None else None
        if label is not None:
            label_only += band_counts(bright, valid, label, None)
        for name, folder in pred_dirs.items():
            mask = Path(folder) / f"{cid}.tif"
            if not mask.is_file():
                raise DataError(f"{folder}: no mask for chip {cid}")
            sums[name] += band_counts(bright, valid, label, _read_mask(mask, refl.shape[1:], "mask"))
    rows = band_rows(label_only, rates=False, method="label") if labels_dir is not None else []
    for name, c in sums.items():
        rows += band_rows(c, method=name)
    return pd.DataFrame(rows)


def plot_bands(table: pd.DataFrame, path: os.PathLike | str, title: str = "") -> Path:
    """Recall (labelled cloud found) and precision (predicted cloud right) by brightness band, one bar per method,
    and the share of the labelled cloud in each band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..common.viz import save_figure

    methods = [m for m in dict.fromkeys(table["method"]) if m != "label"]
    x = np.arange(len(BAND_NAMES))
    width = 0.8 / max(1, len(methods))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    share = table[table["method"] == ("label" if "label" in set(table["method"]) else methods[0])]
    axes[0].bar(x, share["label_share"].to_numpy(), color="grey")
    axes[0].set_title("share of the labelled cloud")
    for ax, col in ((axes[1], "recall"), (axes[2], "precision")):
        for i, m in enumerate(methods):
            v = table[table["method"] == m][col].to_numpy(dtype=float)
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, np.nan_to_num(v), width, label=m)
        ax.set_title(f"{col} by band")
        ax.set_ylim(0, 1.05)
    for ax in axes:
        ax.set_xticks(x, BAND_NAMES)
        ax.set_xlabel("mean visible reflectance")
    axes[2].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
