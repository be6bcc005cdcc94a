"""Figures: PNGs written atomically, and reflectance shown as true colour."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import atomic_write


def save_figure(fig, path: os.PathLike | str, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (parent folders created) and close it."""
    import matplotlib.pyplot as plt

    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), suffix=".png")
    plt.close(fig)
    return out


def true_colour(refl: np.ndarray, top: float = 0.3, gamma: float = 0.8) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] from (4, H, W) reflectance (B04, B03, B02), linear stretch to ``top``."""
    rgb = np.clip(refl[[2, 1, 0]].transpose(1, 2, 0) / top, 0, 1)
    return rgb ** gamma
