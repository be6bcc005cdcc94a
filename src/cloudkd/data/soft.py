"""Soft labels: the teacher's cloud probabilities, stored compactly for offline distillation.

One file per chip, ``{soft_dir}/{chip_id}.tif``: a single-band uint8 TIFF holding ``round(255 * p)``,
deflate-compressed (at most 256 KB for a 512x512 chip, usually far less because most pixels are near 0 or 1).
:func:`read_soft` returns float32 probabilities in [0, 1]; the quantisation error is at most 1/510.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import tifffile

from ..common.errors import DataError
from ..common.io import atomic_write

LEVELS = 255


def quantise(prob: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 levels 0..255."""
    prob = np.asarray(prob, np.float32)
    if prob.size and (np.nanmin(prob) < 0 or np.nanmax(prob) > 1 or np.isnan(prob).any()):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return np.rint(prob * LEVELS).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / np.float32(LEVELS)


def write_soft(path: os.PathLike | str, prob: np.ndarray) -> Path:
    """Write a (H, W) probability map as a compressed uint8 TIFF (atomically)."""
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"{path}: a soft label must be 2-D, got shape {prob.shape}")
    q = quantise(prob)
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, q, photometric="minisblack", compression="zlib",
                                                           metadata=None))


def read_soft(path: os.PathLike | str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A soft label file as float32 (H, W) probabilities in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing soft-label file")
    try:
        q = tifffile.imread(path)
    except Exception as exc:
        raise DataError(f"{path}: unreadable or corrupt soft-label TIFF ({type(exc).__name__}: {exc})") from None
    if q.dtype != np.uint8 or q.ndim != 2:
        raise DataError(f"{path}: a soft label must be a 2-D uint8 image, got {q.dtype} {q.shape}")
    if shape is not None and q.shape != tuple(shape):
        raise DataError(f"{path}: wrong shape {q.shape}, expected {tuple(shape)}")
    return dequantise(q)
