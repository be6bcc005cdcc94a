"""The 38-Cloud protocol (``cloudkd landsat score``): predicted patches stitched into whole scenes, precision,
recall, specificity, Jaccard and accuracy per scene, averaged over scenes."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ...common.errors import DataError
from ...common.io import atomic_write
from ...common.metrics import RATES, Confusion, confusion, none_if_nan, rates
from ..chips import list_masks, read_label, read_mask, write_mask
from ..roots import resolve_split
from .reader import PATCH, PatchName, read_patch_table, stitch

SCENE_METRICS = RATES


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
                "pooled": {k: none_if_nan(v) for k, v in rates(p).items()},
                "missing": self.missing, "invalid": self.invalid, "seconds": round(self.seconds, 3)}

    def write(self, report_dir: Optional[os.PathLike | str] = None, json_path: Optional[os.PathLike | str] = None):
        if report_dir is not None:
            atomic_write(Path(report_dir) / "per_scene.csv", lambda t: self.per_scene.to_csv(t, index=False))
        if json_path is not None:
            atomic_write(json_path, lambda t: Path(t).write_text(json.dumps(self.summary(), indent=2)))


def score_scenes(pred_dir: os.PathLike | str, data: os.PathLike | str, split: str = "test",
                 masks_out: Optional[os.PathLike | str] = None, progress: bool = False) -> SceneReport:
    """Stitch ``pred_dir/{patch}.tif`` into whole scenes and score each against its whole-scene truth.

    ``data`` is a 38-Cloud root or its import (see :mod:`cloudkd.data.landsat.reader`). Every non-empty patch needs a
    prediction (384x384, values 0/1); empty patches (all bands 0) are 0 by definition. Per scene: precision,
    recall, specificity, Jaccard and overall accuracy over the scene's pixels; ``masks_out`` also receives the
    stitched scene masks ``{scene}.tif``.
    """
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
                     "tn": c.tn, **rates(c), "cloud_frac_truth": float(np.mean(truth))})
    per_scene = pd.DataFrame(rows, columns=["scene", "height", "width", "n_patches", "n_empty", "tp", "fp", "fn",
                                            "tn", *SCENE_METRICS, "cloud_frac_truth"])
    return SceneReport(per_scene, sorted(missing), invalid, time.perf_counter() - t0)
