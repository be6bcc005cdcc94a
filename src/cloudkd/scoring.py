"""Leaderboard-style scoring of a folder of predicted masks against a folder of labels.

``score_folder`` streams the files (a small thread pool overlaps the reads), checks every prediction like the
challenge's validation (present, single band, same shape as the label, values in {0, 1}) and returns the global
Jaccard plus per-chip and per-location tables. An incomplete or invalid submission is refused: the report then
has ``jaccard = None`` and lists what is missing / invalid.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pandas as pd

from .data.chips import DataError, atomic_write, read_label, read_mask, read_metadata
from .metrics import Confusion, confusion


def list_masks(folder: os.PathLike | str) -> Dict[str, Path]:
    """``{chip_id: path}`` for the ``*.tif`` files of a folder (hidden / temporary files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    return {e.name[:-4]: Path(e.path) for e in os.scandir(folder)
            if e.is_file() and e.name.endswith(".tif") and not e.name.startswith(".")}


def guess_metadata(labels_dir: os.PathLike | str) -> Optional[Path]:
    """``ROOT/{split}_metadata.csv`` for a labels folder ``ROOT/{split}_labels``, if it exists."""
    labels_dir = Path(labels_dir)
    if labels_dir.name.endswith("_labels"):
        cand = labels_dir.parent / (labels_dir.name[: -len("_labels")] + "_metadata.csv")
        if cand.is_file():
            return cand
    return None


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
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

        return {
            "ok": self.ok,
            "jaccard": num(self.jaccard),
            "intersection": self.total.intersection,
            "union": self.total.union,
            "precision": num(self.total.precision),
            "recall": num(self.total.recall),
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
    union = df.tp + df.fp + df.fn
    df["iou"] = (df.tp / union.where(union > 0)).astype(float)
    df["precision"] = (df.tp / (df.tp + df.fp).where(df.tp + df.fp > 0)).astype(float)
    df["recall"] = (df.tp / (df.tp + df.fn).where(df.tp + df.fn > 0)).astype(float)
    n = df.tp + df.fp + df.fn + df.tn
    df["cloud_frac_label"] = ((df.tp + df.fn) / n).astype(float)
    df["cloud_frac_pred"] = ((df.tp + df.fp) / n).astype(float)
    return df


def per_group(per_chip: pd.DataFrame, key: str) -> pd.DataFrame:
    """Global Jaccard, precision and recall of each group (e.g. location) from a per-chip table."""
    g = per_chip.groupby(key)[["tp", "fp", "fn", "tn"]].sum()
    union = g.tp + g.fp + g.fn
    out = pd.DataFrame({
        key: g.index,
        "n_chips": per_chip.groupby(key).size().values,
        "jaccard": (g.tp / union.where(union > 0)).astype(float).values,
        "precision": (g.tp / (g.tp + g.fp).where(g.tp + g.fp > 0)).astype(float).values,
        "recall": (g.tp / (g.tp + g.fn).where(g.tp + g.fn > 0)).astype(float).values,
        "tp": g.tp.values, "fp": g.fp.values, "fn": g.fn.values,
    })
    return out.reset_index(drop=True)


def score_folder(pred_dir: os.PathLike | str, labels_dir: os.PathLike | str,
                 chips: Optional[Iterable[str]] = None, metadata: Optional[os.PathLike | str] = None,
                 workers: int = 2, progress: bool = False) -> ScoreReport:
    """Score predicted masks ``pred_dir/{chip_id}.tif`` against ``labels_dir/{chip_id}.tif``.

    The expected chips are ``chips`` (e.g. one fold) or else every label file. ``metadata`` (a ``*_metadata.csv``;
    guessed from a ``{split}_labels`` folder when omitted) adds per-location results.
    """
    t0 = time.perf_counter()
    labels = list_masks(labels_dir)
    preds = list_masks(pred_dir)
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

    def one(chip_id: str):
        try:
            y = read_label(labels[chip_id])
        except DataError as exc:
            raise DataError(f"chip {chip_id}: {exc}") from None
        try:
            p = read_mask(preds[chip_id], y.shape, what="predicted mask")
        except DataError as exc:
            return chip_id, None, str(exc)
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
    meta_path = Path(metadata) if metadata is not None else guess_metadata(labels_dir)
    if meta_path is not None:
        meta = read_metadata(meta_path).set_index("chip_id")
        per_chip.insert(1, "location", per_chip.chip_id.map(meta["location"]).fillna("").values)
        per_location = per_group(per_chip, "location")

    jaccard = None
    if not missing and not invalid:
        jaccard = total.jaccard()  # raises EmptyUnionError like the official metric
    return ScoreReport(jaccard, total, len(expected), missing, extra, invalid, time.perf_counter() - t0,
                       per_chip, per_location)


# ----------------------------------------------------------------------------------------------------------------
# 38-Cloud: scene-level evaluation
# ----------------------------------------------------------------------------------------------------------------
SCENE_METRICS = ("jaccard", "precision", "recall", "specificity", "accuracy")


@dataclass
class SceneReport:
    """The 38-Cloud protocol: predicted patches stitched into whole scenes, metrics per scene, then averaged."""

    per_scene: pd.DataFrame
    missing: List[str]
    invalid: List[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.missing and not self.invalid and len(self.per_scene) > 0

    @property
    def means(self) -> Dict[str, Optional[float]]:
        """Each metric averaged over scenes (a scene where a metric is undefined, e.g. no cloud anywhere for the
        Jaccard index, is left out of that metric's mean)."""
        out = {}
        for m in SCENE_METRICS:
            v = self.per_scene[m].dropna() if len(self.per_scene) else pd.Series(dtype=float)
            out[m] = float(v.mean()) if len(v) else None
        return out

    @property
    def pooled(self) -> Confusion:
        g = self.per_scene
        return Confusion(int(g.tp.sum()), int(g.fp.sum()), int(g.fn.sum()), int(g.tn.sum()))

    def summary(self) -> dict:
        p = self.pooled
        return {"ok": self.ok, "n_scenes": int(len(self.per_scene)), "mean_over_scenes": self.means,
                "pooled": {k: _nan(v) for k, v in (("jaccard", p.iou_or_nan()), ("precision", p.precision),
                                                   ("recall", p.recall), ("specificity", p.specificity),
                                                   ("accuracy", p.accuracy))},
                "missing": self.missing, "invalid": self.invalid, "seconds": round(self.seconds, 3)}

    def write(self, report_dir: Optional[os.PathLike | str] = None, json_path: Optional[os.PathLike | str] = None):
        if report_dir is not None:
            atomic_write(Path(report_dir) / "per_scene.csv", lambda t: self.per_scene.to_csv(t, index=False))
        if json_path is not None:
            atomic_write(json_path, lambda t: Path(t).write_text(json.dumps(self.summary(), indent=2)))


def _nan(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def score_scenes(pred_dir: os.PathLike | str, data: os.PathLike | str, split: str = "test",
                 masks_out: Optional[os.PathLike | str] = None, progress: bool = False) -> SceneReport:
    """Stitch ``pred_dir/{patch}.tif`` into whole scenes and score each against its whole-scene truth.

    ``data`` is a 38-Cloud root or its import (see :mod:`cloudkd.data.landsat`). Every non-empty patch needs a
    prediction (384x384, values 0/1); empty patches (all bands 0) are 0 by definition. Per scene: precision,
    recall, specificity, Jaccard and overall accuracy over the scene's pixels; ``masks_out`` also receives the
    stitched scene masks ``{scene}.tif``.
    """
    import numpy as np

    from .data.chips import resolve_split, write_mask
    from .data.landsat import PATCH, PatchName, read_patch_table, stitch

    t0 = time.perf_counter()
    s = resolve_split(data, split)
    table = read_patch_table(s.root, s.name)
    gts = s.root / f"{s.name}_scene_gts"
    preds = list_masks(pred_dir)
    missing, invalid, rows = [], [], []
    groups = list(table.groupby("scene", sort=True))
    if progress:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc="score scenes", unit="scene")
    for scene, g in groups:
        gt_path = gts / f"{scene}.tif"
        if not gt_path.is_file():
            raise DataError(f"{gt_path}: no whole-scene truth for scene {scene} "
                            f"(the dataset's {split} split needs Entire_scene_gts/)")
        truth = read_label(gt_path)
        patches, bad = {}, False
        for r in g.itertuples():
            if r.empty:
                continue
            if r.chip_id not in preds:
                missing.append(r.chip_id)
                bad = True
                continue
            try:
                patches[PatchName(scene, int(r.row), int(r.col), int(r.n))] = read_mask(
                    preds[r.chip_id], (PATCH, PATCH), what="prediction")
            except DataError as exc:
                invalid.append(str(exc))
                bad = True
        if bad:
            continue
        mask = stitch(patches, truth.shape, (int(g.rows.iloc[0]), int(g.cols.iloc[0])))
        if masks_out is not None:
            write_mask(Path(masks_out) / f"{scene}.tif", mask)
        c = confusion(mask, truth)
        rows.append({"scene": scene, "height": truth.shape[0], "width": truth.shape[1],
                     "n_patches": len(g), "n_empty": int(g["empty"].sum()), "tp": c.tp, "fp": c.fp, "fn": c.fn,
                     "tn": c.tn, "jaccard": c.iou_or_nan(), "precision": c.precision, "recall": c.recall,
                     "specificity": c.specificity, "accuracy": c.accuracy,
                     "cloud_frac_truth": float(np.mean(truth))})
    per_scene = pd.DataFrame(rows, columns=["scene", "height", "width", "n_patches", "n_empty", "tp", "fp", "fn",
                                            "tn", *SCENE_METRICS, "cloud_frac_truth"])
    return SceneReport(per_scene, sorted(missing), invalid, time.perf_counter() - t0)
