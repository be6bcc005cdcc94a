"""Chips as a person sees them: true colour and NIR, labels and predictions as outlines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..common.viz import save_figure, true_colour
from .chips import Split, read_chip, read_mask


def plot_chips(split: Split, chip_ids: Sequence[str], path: os.PathLike | str,
               predictions: Optional[Dict[str, os.PathLike | str]] = None, title: str = "") -> Path:
    """A grid: one row per chip with RGB, NIR and (when available) the label and each prediction folder's mask."""
    import matplotlib.pyplot as plt  # the backend stays the user's: save_figure writes the file and closes it

    predictions = dict(predictions or {})
    has_labels = split.has_labels
    ncol = 2 + int(has_labels) + len(predictions)
    nrow = max(1, len(chip_ids))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.6 * nrow), squeeze=False)
    for r, chip_id in enumerate(chip_ids):
        refl = read_chip(split.chip_dir(chip_id))
        rgb = true_colour(refl)
        cols = [("RGB", rgb, None), ("NIR (B08)", np.clip(refl[3] / 0.5, 0, 1), "gray")]
        if has_labels:
            cols.append(("label", read_mask(split.label_path(chip_id), what="label"), None))
        for name, folder in predictions.items():
            p = Path(folder) / f"{chip_id}.tif"
            cols.append((name, read_mask(p) if p.is_file() else None, None))
        for c, (name, img, cmap) in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center")
            elif img.ndim == 2 and cmap is None:  # a mask: cloud in white over a dimmed RGB
                over = rgb * 0.45
                over[img > 0] = (1.0, 0.85, 0.2)
                ax.imshow(over)
                name = f"{name} ({img.mean():.0%} cloud)"
            else:
                ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            if r == 0 or (img is not None and img.ndim == 2 and cmap is None):
                ax.set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(chip_id, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
