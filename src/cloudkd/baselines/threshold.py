"""Classic spectral thresholding: the first row of every results table.

The test is the brightness/whiteness pair of Fmask-style cloud screening, on the four On Cloud N bands:

* brightness ``b = mean(B02, B03, B04)`` (surface reflectance): clouds are bright;
* whiteness ``w = sum_i |B_i - b| / b`` over the visible bands: clouds are flat across the visible spectrum,
  while soil, sand, vegetation and water are coloured.

A pixel is cloud when ``b > brightness_min`` and ``w < whiteness_max``. Both thresholds are *fitted* on training
chips to maximise the leaderboard metric (global Jaccard): for each candidate whiteness bound the best
brightness cut is found exactly from the sorted brightness values, on a regular subsample of pixels.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..common.errors import DataError
from ..common.io import atomic_write
from ..data.chips import check_chip_shapes, list_chip_ids, read_chip, read_label, write_mask

METHOD = "brightness-whiteness"


def spectral_features(refl: np.ndarray):
    """(brightness, whiteness) of a (4, H, W) reflectance chip; whiteness is +inf where brightness is 0."""
    vis = refl[:3]
    b = vis.mean(axis=0)
    dev = np.abs(vis - b[None]).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(b > 0, dev / np.maximum(b, 1e-12), np.inf)
    return b, w


@dataclass
class ThresholdModel:
    brightness_min: float
    whiteness_max: float
    method: str = METHOD
    fit_jaccard: Optional[float] = None
    n_train_chips: Optional[int] = None
    sample_stride: Optional[int] = None

    def predict(self, refl: np.ndarray) -> np.ndarray:
        """uint8 (H, W) cloud mask of a (4, H, W) reflectance chip."""
        b, w = spectral_features(refl)
        return ((b > self.brightness_min) & (w < self.whiteness_max)).astype(np.uint8)

    def save(self, path: os.PathLike | str) -> Path:
        d = asdict(self)
        if math.isinf(d["whiteness_max"]):
            d["whiteness_max"] = "inf"
        return atomic_write(path, lambda t: Path(t).write_text(json.dumps(d, indent=2)))

    @classmethod
    def load(cls, path: os.PathLike | str) -> "ThresholdModel":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read threshold model ({exc})") from None
        if not isinstance(d, dict):
            raise DataError(f"{path}: not a threshold model (a JSON {type(d).__name__}, not an object)")
        if d.get("method") != METHOD:
            raise DataError(f"{path}: not a {METHOD} threshold model (method={d.get('method')!r})")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - fields)
        if unknown:
            raise DataError(f"{path}: unknown field(s) {unknown} in a threshold model")
        for key in ("brightness_min", "whiteness_max"):
            v = d.get(key)
            try:
                if isinstance(v, bool) or v is None:
                    raise ValueError
                x = float(v)  # whiteness_max may be "inf" (no whiteness limit)
            except (TypeError, ValueError):
                raise DataError(f"{path}: {key} must be a number, got {v!r}") from None
            if math.isnan(x) or (key == "brightness_min" and not math.isfinite(x)):
                raise DataError(f"{path}: {key} must be a {'finite ' if key == 'brightness_min' else ''}number, "
                                f"got {v!r}")
            d[key] = x
        return cls(**d)


def best_brightness_cut(b: np.ndarray, y: np.ndarray, n_pos: int):
    """Best threshold on ``b`` (predict cloud where b > t) for the Jaccard, among candidate pixels ``b, y``.

    ``n_pos`` is the total number of cloud pixels (candidates or not): those outside the candidates are
    false negatives whatever the cut. Returns (jaccard, threshold).
    """
    if n_pos == 0 and len(b) == 0:
        return 0.0, math.inf
    order = np.argsort(-b, kind="stable")
    bs, ys = b[order], y[order].astype(np.int64)
    tp = np.cumsum(ys)
    fp = np.arange(1, len(bs) + 1) - tp
    # only cut between distinct values: keep the last index of each run of equal brightness
    last = np.ones(len(bs), bool)
    last[:-1] = bs[:-1] != bs[1:]
    union = n_pos + fp
    jac = np.where(last & (union > 0), tp / np.maximum(union, 1), -1.0)
    k = int(np.argmax(jac))
    best = float(jac[k])
    if best <= 0:  # predicting nothing is as good as anything
        return 0.0, math.inf
    nxt = bs[k + 1] if k + 1 < len(bs) else bs[k] - 1e-3
    return best, float((bs[k] + nxt) / 2.0)


def fit_threshold(chip_dirs: Iterable[os.PathLike | str], label_paths: Iterable[os.PathLike | str],
                  stride: int = 4, progress: bool = False) -> ThresholdModel:
    """Fit (brightness_min, whiteness_max) on training chips to maximise the global Jaccard."""
    chip_dirs, label_paths = list(chip_dirs), list(label_paths)
    if not chip_dirs or len(chip_dirs) != len(label_paths):
        raise DataError("fit_threshold needs one label per chip and at least one chip")
    it = zip(chip_dirs, label_paths)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(chip_dirs), desc="threshold: read", unit="chip")
    bs, ws, ys = [], [], []
    for chip_dir, label_path in it:
        refl = read_chip(chip_dir)[:, ::stride, ::stride]
        y = read_label(label_path)[::stride, ::stride]
        b, w = spectral_features(refl)
        valid = refl.max(axis=0) > 0  # nodata pixels are never cloud; keep them out of the fit
        bs.append(b[valid].ravel())
        ws.append(w[valid].ravel())
        ys.append(y[valid].ravel())
    b, w, y = np.concatenate(bs), np.concatenate(ws), np.concatenate(ys).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise DataError("fit_threshold: the training labels contain no cloud pixel; cannot fit a threshold")
    w_cloud = w[y & np.isfinite(w)]
    grid = np.unique(np.concatenate([np.quantile(w_cloud, np.linspace(0.5, 1.0, 26)), [np.inf]]))
    best = (-1.0, math.inf, math.inf)
    for wmax in grid:
        sel = w <= wmax if np.isinf(wmax) else w < wmax
        jac, bmin = best_brightness_cut(b[sel], y[sel], n_pos)
        if jac > best[0]:
            best = (jac, bmin, float(wmax))
    jac, bmin, wmax = best
    return ThresholdModel(brightness_min=bmin, whiteness_max=wmax, fit_jaccard=jac, n_train_chips=len(chip_dirs),
                          sample_stride=stride)


def predict_folder(model: ThresholdModel, features_dir: os.PathLike | str, out_dir: os.PathLike | str,
                   chip_ids: Optional[Iterable[str]] = None, progress: bool = False) -> int:
    """Write ``out_dir/{chip_id}.tif`` masks (submission format) for the chips of a features folder."""
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    ids = list(chip_ids) if chip_ids is not None else list_chip_ids(features_dir)
    check_chip_shapes(features_dir, ids)  # the one chip-shape rule, before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    it = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc="threshold: predict", unit="chip")
    for chip_id in it:
        write_mask(out_dir / f"{chip_id}.tif", model.predict(read_chip(features_dir / chip_id)))
    return len(ids)
