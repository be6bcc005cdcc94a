"""Soft labels: the teacher's cloud probabilities, stored compactly for offline distillation.

One file per chip, ``{soft_dir}/{chip_id}.tif``: a single-band uint8 TIFF holding ``round(255 * p)``,
deflate-compressed (at most 256 KB for a 512x512 chip, usually far less because most pixels are near 0 or 1).
:func:`read_soft` returns float32 probabilities in [0, 1]; the quantisation error is at most 1/510.

A folder of labels (uint8 too, but 0/1: cloud is 1, not 255) would read as probabilities of at most 1/255, a
silent "no cloud anywhere": :func:`check_soft_folder` refuses a folder whose files hold only 0 and 1 with at least
one 1 (a teacher's soft labels hold 255, or at least values above 1, wherever it sees cloud), and :func:`read_soft`
checks the folder of the first such file it meets.
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


#: how many files of a folder :func:`soft_folder_problem` reads at most (it stops at the first that holds a
#: probability above 1/255, the first cloudy chip of a teacher's folder)
LOOK_AT = 64
#: folders already checked by read_soft: resolved path -> problem or None
_CHECKED: dict = {}


def soft_folder_problem(soft_dir: os.PathLike | str, look_at: int = LOOK_AT) -> Optional[str]:
    """Why ``soft_dir`` is not a folder of soft labels (None: nothing against it): its first ``look_at`` files
    (sorted) hold only the values 0 and 1, and some 1, as label masks do (a teacher's soft label holds levels up
    to 255). Files that cannot be read are left to :func:`read_soft`."""
    soft_dir = Path(soft_dir)
    if not soft_dir.is_dir():
        return None
    files = sorted(e.path for e in os.scandir(soft_dir)
                   if e.is_file() and e.name.endswith(".tif") and not e.name.startswith("."))[:look_at]
    seen, ones = 0, 0
    for f in files:
        try:
            q = tifffile.imread(f)
        except Exception:
            continue
        if q.dtype != np.uint8 or q.size == 0:
            continue
        top = int(q.max())
        if top > 1:
            return None  # a probability above 1/255: soft labels
        seen += 1
        ones += top == 1
    if ones:
        return (f"{soft_dir}: looks like a folder of labels (uint8 values only 0 and 1 in the {seen} file(s) "
                f"read), not soft labels written by 'cloudkd teacher predict --soft-out' (round(255 p): cloud is "
                f"255); give the teacher's soft labels")
    return None


def check_soft_folder(soft_dir: os.PathLike | str) -> None:
    """:func:`soft_folder_problem` as a one-line :class:`DataError` (before any training on ``soft_dir``)."""
    problem = soft_folder_problem(soft_dir)
    if problem:
        raise DataError(problem)


def read_soft(path: os.PathLike | str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A soft label file as float32 (H, W) probabilities in [0, 1]. A file holding only 0 and 1 has its folder
    checked once (:func:`soft_folder_problem`): labels are refused."""
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
    if q.size and q.max() == 1:  # only 0/1 (and some 1): a label mask, or a very sure clear chip; ask the folder
        folder = path.parent.resolve()
        if folder not in _CHECKED:
            _CHECKED[folder] = soft_folder_problem(folder)
        if _CHECKED[folder]:
            raise DataError(_CHECKED[folder])
    return dequantise(q)
