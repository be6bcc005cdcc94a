"""Leaderboard-style scoring of a folder of predicted masks against a folder of labels.

``score_folder`` streams the files (a small thread pool overlaps the reads), checks every prediction like the
challenge's validation (present, single band, same shape as the label, values in {0, 1}) and returns the global
Jaccard plus per-chip and per-location tables. An incomplete or invalid submission is refused: the report then
has ``jaccard = None`` and lists what is missing / invalid.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional

import pandas as pd

from ..common.errors import DataError
from ..common.io import atomic_write
from ..common.metrics import Confusion, confusion, none_if_nan, rates
from ..data.chips import list_masks, read_label, read_mask, read_metadata


def guess_metadata(labels_dir: os.PathLike | str) -> Optional[Path]:
    """``ROOT/{split}_metadata.csv`` for a labels folder ``ROOT/{split}_labels``, if it exists."""
    labels_dir = Path(labels_dir)
    if labels_dir.name.endswith("_labels"):
        cand = labels_dir.parent / (labels_dir.name[: -len("_labels")] + "_metadata.csv")
        if cand.is_file():
            return cand
    return None


def _tiff_shape(path: os.PathLike | str) -> Optional[tuple]:
    """(H, W) of a single-band TIFF from its header (nothing decoded), None when unreadable or not 2-D."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0] if tif.series else tif.pages[0]
            shape = tuple(int(d) for d in series.shape if int(d) != 1)
    except Exception:
        return None
    return shape if len(shape) == 2 else None


class _ChipShapes:
    """What shape the label of a chip must have, to tell a wrong label from a wrong prediction: the chip's own
    (its B02 band in the dataset's ``{split}_features`` folder beside ``{split}_labels``), else the shape most of
    the labels have (more than half of them, at least two)."""

    def __init__(self, labels_dir: Path, labels: dict):
        self.labels = labels
        self.features = None
        if labels_dir.name.endswith("_labels"):
            f = labels_dir.parent / (labels_dir.name[: -len("_labels")] + "_features")
            self.features = f if f.is_dir() else None
        self._common, self._lock = False, threading.Lock()

    def common(self) -> Optional[tuple]:
        from collections import Counter

        with self._lock:
            if self._common is False:
                counts = Counter(_tiff_shape(p) for p in self.labels.values())
                counts.pop(None, None)
                shape, n = counts.most_common(1)[0] if counts else (None, 0)
                self._common = shape if n >= 2 and n > len(self.labels) / 2 else None
            return self._common

    def want(self, chip_id: str):
        """(shape, whose) the label of ``chip_id`` must have, or (None, None) when nothing says."""
        if self.features is not None:
            band = self.features / chip_id / "B02.tif"
            shape = _tiff_shape(band) if band.is_file() else None
            if shape is not None:
                return shape, f"its chip ({band})"
        shape = self.common()
        return (shape, f"the other labels of {Path(self.labels[chip_id]).parent}") if shape else (None, None)


@dataclass
class ScoreReport:
    jaccard: Optional[float]
    total: Confusion
    n_chips: int
    missing: List[str]
    extra: List[str]
    invalid: List[str]
    seconds: float
    per_chip: pd.DataFrame = field(repr=False)
    per_location: Optional[pd.DataFrame] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.invalid and self.jaccard is not None

    def summary(self) -> dict:
        return {
            "ok": self.ok,
            "jaccard": none_if_nan(self.jaccard),
            "intersection": self.total.intersection,
            "union": self.total.union,
            "precision": none_if_nan(self.total.precision),
            "recall": none_if_nan(self.total.recall),
            "n_chips": self.n_chips,
            "n_scored": int(len(self.per_chip)),
            "missing": self.missing,
            "extra": self.extra,
            "invalid": self.invalid,
            "seconds": round(self.seconds, 3),
            "chips_per_s": round(len(self.per_chip) / self.seconds, 1) if self.seconds > 0 else None,
        }

    def write(self, report_dir: Optional[os.PathLike | str] = None, json_path: Optional[os.PathLike | str] = None):
        if report_dir is not None:
            report_dir = Path(report_dir)
            atomic_write(report_dir / "per_chip.csv", lambda t: self.per_chip.to_csv(t, index=False))
            if self.per_location is not None:
                atomic_write(report_dir / "per_location.csv", lambda t: self.per_location.to_csv(t, index=False))
        if json_path is not None:
            atomic_write(json_path, lambda t: Path(t).write_text(json.dumps(self.summary(), indent=2)))


def _rows_to_table(rows: List[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["chip_id", "tp", "fp", "fn", "tn"])
    r = rates(df)
    df["iou"], df["precision"], df["recall"] = r["jaccard"], r["precision"], r["recall"]
    n = df.tp + df.fp + df.fn + df.tn
    df["cloud_frac_label"] = ((df.tp + df.fn) / n).astype(float)
    df["cloud_frac_pred"] = ((df.tp + df.fp) / n).astype(float)
    return df


def per_group(per_chip: pd.DataFrame, key: str) -> pd.DataFrame:
    """Global Jaccard, precision and recall of each group (e.g. location) from a per-chip table."""
    g = per_chip.groupby(key)[["tp", "fp", "fn", "tn"]].sum()
    r = rates(g)
    out = pd.DataFrame({
        key: g.index,
        "n_chips": per_chip.groupby(key).size().values,
        "jaccard": r["jaccard"].values, "precision": r["precision"].values, "recall": r["recall"].values,
        "tp": g.tp.values, "fp": g.fp.values, "fn": g.fn.values,
    })
    return out.reset_index(drop=True)


def score_folder(pred_dir: os.PathLike | str, labels_dir: os.PathLike | str,
                 chips: Optional[Iterable[str]] = None, metadata: Optional[os.PathLike | str] = None,
                 workers: int = 2, progress: bool = False) -> ScoreReport:
    """Score predicted masks ``pred_dir/{chip_id}.tif`` against ``labels_dir/{chip_id}.tif``.

    The expected chips are ``chips`` (e.g. one fold) or else every label file. ``metadata`` (a ``*_metadata.csv``;
    guessed from a ``{split}_labels`` folder when omitted) adds per-location results; it lists the split's chips,
    so without ``chips`` a chip it lists that has no label file is an error (:class:`DataError` naming them).
    """
    t0 = time.perf_counter()
    labels = list_masks(labels_dir)
    preds = list_masks(pred_dir)
    meta_path = Path(metadata) if metadata is not None else guess_metadata(labels_dir)
    meta = read_metadata(meta_path).set_index("chip_id") if meta_path is not None else None
    if meta is not None and chips is None:
        unlabelled = [c for c in meta.index if c not in labels]
        if unlabelled:
            raise DataError(f"{labels_dir}: no label file for {len(unlabelled)} chip(s) listed in {meta_path}: "
                            f"{', '.join(unlabelled[:10])}{' ...' if len(unlabelled) > 10 else ''}")
    if chips is not None:
        expected = sorted(set(chips))
        no_label = [c for c in expected if c not in labels]
        if no_label:
            raise DataError(f"{labels_dir}: no label file for {len(no_label)} chip(s): {no_label[:10]}")
    else:
        expected = sorted(labels)
    if not expected:
        raise DataError(f"{labels_dir}: no label files (*.tif) to score against")
    exp_set = set(expected)
    missing = [c for c in expected if c not in preds]
    extra = sorted(c for c in preds if c not in exp_set)
    todo = [c for c in expected if c in preds]

    shapes = _ChipShapes(Path(labels_dir), labels)

    def one(chip_id: str):
        try:
            y = read_label(labels[chip_id])
        except DataError as exc:
            raise DataError(f"chip {chip_id}: {exc}") from None
        try:
            p = read_mask(preds[chip_id], what="predicted mask")
        except DataError as exc:
            return chip_id, None, str(exc)
        if p.shape != y.shape:  # which is wrong: a label that does not fit its chip is bad input, named as such
            want, whose = shapes.want(chip_id)
            if want is not None and y.shape != want:
                raise DataError(f"{labels[chip_id]}: a label of {y.shape[0]}x{y.shape[1]} pixels, but {whose} is "
                                f"{want[0]}x{want[1]}: the label does not fit its chip")
            return chip_id, None, f"{preds[chip_id]}: wrong shape {p.shape}, expected {y.shape}"
        return chip_id, confusion(p, y), None

    rows, invalid = [], []
    total = Confusion()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(one, todo)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(todo), desc="score", unit="chip")
        for chip_id, c, err in results:
            if err is not None:
                invalid.append(err)
                continue
            total += c
            rows.append({"chip_id": chip_id, "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn})
    per_chip = _rows_to_table(rows)

    per_location = None
    if meta is not None:
        per_chip.insert(1, "location", per_chip.chip_id.map(meta["location"]).fillna("").values)
        per_location = per_group(per_chip, "location")

    jaccard = None
    if not missing and not invalid:
        jaccard = total.jaccard()  # raises EmptyUnionError like the official metric
    return ScoreReport(jaccard, total, len(expected), missing, extra, invalid, time.perf_counter() - t0,
                       per_chip, per_location)
