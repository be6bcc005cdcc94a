"""``teacher prepare``: a labelled On Cloud N-layout split -> an nnU-Net raw dataset and ``splits_final.json``
written from the project's location-grouped folds (no location in the training and validation part of a fold).

Chips listed in an ``exclude`` file (:mod:`cloudkd.data.exclude`) and chips of fold -1 in the folds are not
converted; ``dataset.json`` records them (``numTraining`` counts the rest, ``cloudkd_excluded`` lists them).

The raw dataset holds the project's own normalised inputs (``normalise(read_chip(...))``, float32, one compressed
TIFF per band), so the teacher, the student and ``submission/main.py`` see exactly the same inputs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import tifffile

from ..common.errors import DataError
from ..common.io import atomic_write
from ..data.chips import BANDS, load_index, read_chip, read_label, validate_split
from ..data.exclude import exclude_ids, exclude_message
from ..data.folds import EXCLUDED, folds_exclusion_line, training_split
from ..data.normalise import MEAN, REFL_MAX, STD, normalise
from ..data.roots import resolve_split
from .workspace import DEFAULT_DATASET_ID, DEFAULT_NAME, FILE_ENDING, Workspace, dataset_name, dump_json, load_json


@dataclass
class PrepareResult:
    dataset_name: str
    n_chips: int
    shape: tuple
    reused: bool
    seconds: float
    raw_dir: Path
    splits_file: Path
    excluded: tuple = ()  # chips not converted: listed in ``exclude`` or in fold -1

def _fingerprint(source: Path, index: pd.DataFrame, folds: pd.DataFrame, shape) -> dict:
    ids = sorted(index.chip_id)
    fold_of = folds.set_index("chip_id")["fold"]
    h = hashlib.sha256()
    for c in ids:
        h.update(f"{c}:{int(fold_of[c])};".encode())
    return {"source": str(source), "n_chips": len(ids), "shape": list(shape), "bands": list(BANDS),
            "chips_and_folds_sha256": h.hexdigest(),
            "normalise": {"mean": list(MEAN), "std": list(STD), "refl_max": REFL_MAX}}

def _write_case(args) -> None:
    raw_dir, chip_id, features, label, shape = args
    x = normalise(read_chip(features, shape))
    for c in range(x.shape[0]):
        tifffile.imwrite(raw_dir / "imagesTr" / f"{chip_id}_{c:04d}{FILE_ENDING}", x[c], compression="zlib",
                         predictor=True, metadata=None)
    tifffile.imwrite(raw_dir / "labelsTr" / f"{chip_id}{FILE_ENDING}", read_label(label, shape), metadata=None)

def prepare(data: os.PathLike | str, workspace: Workspace, dataset_id: int = DEFAULT_DATASET_ID,
            name: str = DEFAULT_NAME, folds: Optional[pd.DataFrame] = None, k: int = 5, seed: int = 0,
            workers: int = 2, progress: bool = True, exclude: Optional[os.PathLike | str] = None,
            folds_source: str = "the folds") -> PrepareResult:
    """Convert a labelled On Cloud N-layout split into an nnU-Net raw dataset and write its splits.

    Every chip and label is validated first (missing labels, mixed chip sizes, missing/extra-dimensional bands
    fail here, before any nnU-Net code runs). Idempotent: the same data and folds reuse the existing dataset;
    a different dataset under the same id is refused.

    ``exclude``: a file of chip ids left out (checked against the split before anything is read or written);
    chips of fold -1 in ``folds`` (read from ``folds_source``) are left out too; each prints one line.
    """
    t0 = time.perf_counter()
    split = resolve_split(data, "train")
    if not split.labels_dir.is_dir():
        raise DataError(f"teacher prepare: {split.labels_dir}: labels folder does not exist; the teacher needs "
                        f"labelled chips (nothing was written)")
    drop_ids = []
    if exclude is not None:  # before the long validation: an unknown id fails at once
        drop_ids = exclude_ids(pd.DataFrame({"chip_id": split.chip_ids()}), exclude, split.features_dir)
    report = validate_split(split, labels=True, progress=progress)
    if not report.ok:
        report.raise_if_failed(context="teacher prepare: ", after="; nothing was written")
    index = load_index(split, require_labels=True)
    if exclude is not None:
        print(exclude_message(len(drop_ids), len(index), exclude), flush=True)
    if folds is not None:
        line = folds_exclusion_line(index, folds, drop_ids, folds_source)
        if line:
            print(line, flush=True)
        n_folds = int(folds.fold.max()) + 1
    else:
        n_folds = k
    # the one split: folds of the full table, then fold -1 for the excluded chips (no other chip moves)
    split_table = training_split(index, folds, drop_ids, k=k, seed=seed, source=f"teacher prepare: {folds_source}")
    out_of_folds = set(split_table.chip_id[split_table.fold == EXCLUDED])
    excluded = sorted(out_of_folds)
    index = index[~index.chip_id.isin(out_of_folds)].reset_index(drop=True)
    folds = split_table[split_table.fold != EXCLUDED].reset_index(drop=True)
    empty = [f for f in range(n_folds) if not (folds.fold == f).any()]
    if empty:
        raise DataError(f"teacher prepare: fold(s) {empty} have no chip left after leaving out {len(excluded)} "
                        f"chip(s) (nnU-Net's fold i is fold i of the folds); exclude fewer chips or give --folds")
    ds_name = dataset_name(dataset_id, name)
    fp = _fingerprint(split.root.resolve(), index, folds, report.shape)
    raw_dir = workspace.raw / ds_name
    splits_file = workspace.preprocessed / ds_name / "splits_final.json"

    for existing in workspace.dataset_folders(dataset_id):
        if existing.name != ds_name:
            raise DataError(f"teacher prepare: dataset id {dataset_id} is already used by {existing}; "
                            f"choose another --dataset-id")
    if raw_dir.exists():
        djson = raw_dir / "dataset.json"
        have = load_json(djson).get("cloudkd") if djson.is_file() else None
        if have != fp:
            what = f"{have.get('n_chips')} chips from {have.get('source')}" if isinstance(have, dict) else "unknown"
            raise DataError(f"teacher prepare: {raw_dir} already holds a different dataset ({what}); use another "
                            f"--dataset-id or delete that folder")
        if splits_file.is_file():
            return PrepareResult(ds_name, len(index), report.shape, True, time.perf_counter() - t0, raw_dir,
                                 splits_file, tuple(excluded))

    else:
        tmp = workspace.raw / f".{ds_name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir(parents=True)
        jobs = [(tmp, r.chip_id, r.features, r.label, report.shape) for r in index.itertuples()]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            it = pool.map(_write_case, jobs)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(jobs), desc="teacher prepare", unit="chip")
            for _ in it:
                pass
        dataset_json = {
            "channel_names": {str(i): b for i, b in enumerate(BANDS)},
            "labels": {"background": 0, "cloud": 1},
            "numTraining": len(index),
            "file_ending": FILE_ENDING,
            "name": ds_name,
            "description": "Cloud segmentation (On Cloud N layout). Images are cloudkd.data.normalise(read_chip()) "
                           "float32; plans use NoNormalization.",
            "cloudkd": fp,
        }
        if excluded:  # the chips of the source split that are not in this dataset
            dataset_json["cloudkd_excluded"] = {"n_chips": len(excluded), "chip_ids": excluded,
                                                "exclude_file": str(exclude) if exclude is not None else None}
        dump_json(tmp / "dataset.json", dataset_json)
        os.replace(tmp, raw_dir)

    # nnU-Net fold i = our fold i; validation = the chips of that fold (whole locations)
    splits = []
    for f in range(n_folds):
        splits.append({"train": sorted(folds.chip_id[folds.fold != f]), "val": sorted(folds.chip_id[folds.fold == f])})
    splits_file.parent.mkdir(parents=True, exist_ok=True)
    dump_json(splits_file, splits)
    atomic_write(workspace.root / f"{ds_name}_folds.csv", lambda t: folds.to_csv(t, index=False))
    return PrepareResult(ds_name, len(index), report.shape, False, time.perf_counter() - t0, raw_dir, splits_file,
                         tuple(excluded))
