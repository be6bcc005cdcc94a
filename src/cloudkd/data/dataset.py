"""Torch dataset of chips, returning dicts like torchgeo: ``{"image", "mask", "chip_id"}``.

* ``image``: float32 tensor (4, H, W), read with :func:`read_chip` and normalised with :func:`normalise`;
* ``mask``: float32 tensor (1, H, W) in {0, 1} (present when the table has labels), the shape of smp's
  binary logits;
* ``soft``: float32 tensor (1, H, W) in [0, 1], the teacher's cloud probability (when ``soft_dir`` is given:
  ``soft_dir/{chip_id}.tif`` written by ``cloudkd teacher predict --soft-out``);
* ``chip_id``: str.

A nodata pixel (reflectance 0 in every band, :func:`cloudkd.common.infer.nodata_mask`) keeps its mark in the
normalised image: every band holds :data:`NODATA_IMAGE`; :func:`image_nodata` finds such pixels in a batch, so
validation can apply the one prediction rule (nodata clear) to the images it is given.

An optional ``transform`` receives and returns the sample as numpy arrays (``image`` (4, H, W) float32, ``mask``
(1, H, W) float32) before conversion to tensors, so augmentation sees image and mask together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..common.errors import DataError
from ..common.infer import nodata_mask
from .chips import read_chip, read_label
from .normalise import normalise
from .soft import read_soft


#: a nodata pixel as the dataset's images hold it: the normalised reflectance 0 of each band, shape (4, 1, 1)
NODATA_IMAGE = normalise(np.zeros((4, 1, 1), np.float32))


def image_nodata(images) -> np.ndarray:
    """Boolean numpy (..., H, W): the nodata pixels of images as :class:`ChipDataset` returns them (normalised,
    (..., 4, H, W), torch or numpy), by the prediction rule's :func:`~cloudkd.common.infer.nodata_mask`: every
    band equals :data:`NODATA_IMAGE`. For the reflectance :func:`read_chip` returns (never below 0, which
    ``normalise`` would clip to 0) this is exactly ``nodata_mask`` of the reflectance; only geometric
    augmentation that interpolates (training) would blur it, and validation images are not augmented."""
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return nodata_mask(x, NODATA_IMAGE)


class ChipDataset(Dataset):
    """Chips of a table made by :func:`cloudkd.data.chips.load_index` (or a subset of it, e.g. one fold)."""

    def __init__(self, index: pd.DataFrame, transform: Optional[Callable[[Dict], Dict]] = None,
                 with_labels: Optional[bool] = None, soft_dir: Optional[os.PathLike | str] = None,
                 labelled_flag: Optional[bool] = None):
        """``labelled_flag`` (for a set mixing labelled and unlabelled chips): every sample gets ``labelled``
        (1.0 or 0.0), and the unlabelled ones (False) an all-clear placeholder ``mask`` that the loss leaves out,
        so that batches of both collate."""
        self.index = index.reset_index(drop=True)
        self.labelled_flag = labelled_flag
        has = "label" in self.index.columns and bool(len(self.index)) and all(self.index["label"].astype(bool))
        if with_labels and not has:
            raise ValueError("with_labels=True but the chip table has no label paths")
        self.with_labels = has if with_labels is None else with_labels
        self.transform = transform
        self.soft_dir = Path(soft_dir) if soft_dir is not None else None
        if self.soft_dir is not None:
            missing = [c for c in self.index["chip_id"] if not (self.soft_dir / f"{c}.tif").is_file()]
            if missing:
                raise DataError(f"{self.soft_dir}: no soft label for {len(missing)} chip(s): {missing[:10]} "
                                f"(run 'cloudkd teacher predict --soft-out {self.soft_dir}' on these chips)")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Dict[str, object]:
        row = self.index.iloc[i]
        refl = read_chip(row["features"])
        sample: Dict[str, object] = {"image": normalise(refl)}
        if self.with_labels:
            sample["mask"] = read_label(row["label"], refl.shape[1:]).astype(np.float32)[None]
        elif self.labelled_flag is False:
            sample["mask"] = np.zeros((1,) + refl.shape[1:], np.float32)
        if self.labelled_flag is not None:
            sample["labelled"] = np.float32(bool(self.with_labels and self.labelled_flag))
        if self.soft_dir is not None:
            sample["soft"] = read_soft(self.soft_dir / f"{row['chip_id']}.tif", refl.shape[1:])[None]
        if self.transform is not None:
            sample = self.transform(sample)
        out: Dict[str, object] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}
        out["chip_id"] = str(row["chip_id"])
        return out
