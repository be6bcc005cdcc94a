"""Batched inference of a trained student (or any model with the smp call shape) over a folder of chips."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.chips import check_chip_shapes, list_chip_ids, read_chip, write_mask
from ..data.normalise import normalise
from ..common.infer import DEFAULT_DILATE, DEFAULT_THRESHOLD, check_dilate, nodata_mask, predict_masks


def predict_folder(model: torch.nn.Module, features_dir: os.PathLike | str, out_dir: os.PathLike | str,
                   chip_ids: Optional[Sequence[str]] = None, batch_size: int = 8, tta: bool = False,
                   threshold: float = DEFAULT_THRESHOLD, progress: bool = True,
                   dilate: int = DEFAULT_DILATE) -> dict:
    """Write ``out_dir/{chip_id}.tif`` (submission format) for every chip with the one prediction rule
    (:func:`cloudkd.common.infer.predict_masks`; ``threshold`` and ``dilate``: pass the model's, see
    :func:`cloudkd.student.runs.recorded_rule`). Chips that break the chip-shape rule
    (:func:`cloudkd.data.chips.check_chip_shapes`) are refused before anything is written. Returns timing
    (``ms_per_chip`` counts the model and the rule, ``wall_ms_per_chip`` includes reading and writing)."""
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    ids = list(chip_ids) if chip_ids is not None else list_chip_ids(features_dir)
    check_chip_shapes(features_dir, ids)
    check_dilate(dilate)
    model.eval()
    batches = [ids[i:i + batch_size] for i in range(len(ids)) if i % batch_size == 0]
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="predict", unit="batch")
    t_model, t0 = 0.0, time.perf_counter()
    for group in it:
        refl = np.stack([read_chip(features_dir / c) for c in group])
        x = torch.from_numpy(normalise(refl))
        t = time.perf_counter()
        masks = predict_masks(model, x, nodata_mask(refl), threshold, tta, dilate)
        t_model += time.perf_counter() - t
        for c, m in zip(group, masks):
            write_mask(out_dir / f"{c}.tif", m)
    n = max(1, len(ids))
    return {"n_chips": len(ids), "ms_per_chip": 1000 * t_model / n,
            "wall_ms_per_chip": 1000 * (time.perf_counter() - t0) / n}
