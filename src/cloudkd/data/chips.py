"""The On Cloud N layout: finding chips, reading them, validating them, writing masks.

This module is the only place that reads a chip or a label from disk. Everything downstream (the threshold
baseline, the teacher, the student, scoring, submission/main.py) goes through :func:`read_chip`,
:func:`read_label` and :func:`cloudkd.data.normalise.normalise`.

Layout (train shown; ``test`` is the same without labels)::

    ROOT/train_features/{chip_id}/B02.tif B03.tif B04.tif B08.tif   uint16, reflectance x 10000, nodata 0
    ROOT/train_labels/{chip_id}.tif                                  uint8, 1 = cloud, 0 = not cloud
    ROOT/train_metadata.csv                                          chip_id, location, datetime[, cloudpath]

The set of chips is the set of folders under ``*_features`` whose names do not start with "." (as in the
challenge runtime); the metadata CSV must list exactly the same chips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tifffile

# BANDS (B02, B03, B04, B08: the channel order of every model and array in the project) and SCALE (digital numbers
# on disk are surface reflectance x SCALE) live in normalise.py, which also travels inside the submission zip.
from ..common.errors import DataError, problems
from ..common.io import atomic_write
from .normalise import BANDS, dn_to_reflectance

#: Columns the metadata CSV must have (the train file of the challenge also has ``cloudpath``).
METADATA_COLUMNS = ("chip_id", "location", "datetime")

#: Written into a dataset root by a generator (``cloudkd data synth``, ``cloudkd landsat synth``) before anything
#: else and removed only after its completion stamp: while it is there the dataset is incomplete, whatever else the
#: folder holds. Real datasets have neither file. (Defined with the output policy, which takes it as the generator's
#: mark on the folder.)
from ..common.outputs import UNFINISHED  # noqa: E402


def unfinished_problem(root: os.PathLike | str) -> Optional[str]:
    """The problem to report when ``root`` holds an interrupted generation (its :data:`UNFINISHED` marker)."""
    marker = Path(root) / UNFINISHED
    if marker.exists():
        return (f"{marker}: generation did not finish (the generator was interrupted); the dataset is incomplete: "
                f"run the generator again on this folder")
    return None


# ----------------------------------------------------------------------------------------------------------------
# Finding a split
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One split (``train`` or ``test``) of a dataset in the On Cloud N layout."""

    root: Path
    name: str

    @property
    def features_dir(self) -> Path:
        return self.root / f"{self.name}_features"

    @property
    def labels_dir(self) -> Path:
        return self.root / f"{self.name}_labels"

    @property
    def metadata_csv(self) -> Path:
        return self.root / f"{self.name}_metadata.csv"

    @property
    def has_labels(self) -> bool:
        return self.labels_dir.is_dir()

    def chip_dir(self, chip_id: str) -> Path:
        return self.features_dir / chip_id

    def label_path(self, chip_id: str) -> Path:
        return self.labels_dir / f"{chip_id}.tif"

    def chip_ids(self) -> List[str]:
        return list_chip_ids(self.features_dir)


def list_chip_ids(features_dir: os.PathLike | str) -> List[str]:
    """Chip ids = sub-folders of a features folder, hidden ones (starting with '.') ignored, sorted."""
    d = Path(features_dir)
    if not d.is_dir():
        raise DataError(f"{d}: features folder does not exist")
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------
def _read_tiff(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for truncated / non-TIFF files
        raise DataError(f"{path}: unreadable or corrupt TIFF ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.size == 0:
        raise DataError(f"{path}: unreadable or corrupt TIFF (no image data)")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-band 2-D image, got shape {arr.shape}")
    return arr


def read_band(path: os.PathLike | str, encoding: str = "reflectance x 10000") -> np.ndarray:
    """One band file as a uint16 (H, W) array of digital numbers (``encoding`` names them in errors)."""
    path = Path(path)
    arr = _read_tiff(path, "band file")
    if arr.dtype != np.uint16:
        raise DataError(f"{path}: wrong dtype {arr.dtype}, expected uint16 ({encoding})")
    return arr


def read_chip_dn(chip_dir: os.PathLike | str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The four bands of a chip as uint16 (4, H, W) digital numbers, in :data:`BANDS` order."""
    chip_dir = Path(chip_dir)
    if not chip_dir.is_dir():
        raise DataError(f"{chip_dir}: chip folder does not exist")
    bands = []
    for band in BANDS:
        arr = read_band(chip_dir / f"{band}.tif")
        want = shape if shape is not None else (bands[0].shape if bands else None)
        if want is not None and arr.shape != tuple(want):
            raise DataError(
                f"{chip_dir / (band + '.tif')}: wrong shape {arr.shape}, expected {tuple(want)}"
                + ("" if shape is not None else f" like {BANDS[0]}.tif")
            )
        bands.append(arr)
    return np.stack(bands)


def read_chip(chip_dir: os.PathLike | str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The four bands of a chip as float32 (4, H, W) surface reflectance (DN / 10000), in :data:`BANDS` order.

    Nodata pixels (DN 0) read as 0.0. ``shape`` optionally enforces (H, W).
    """
    return dn_to_reflectance(read_chip_dn(chip_dir, shape))


def chip_shape(chip_dir: os.PathLike | str) -> Optional[Tuple[int, int]]:
    """(H, W) of a chip from the TIFF headers of its band files, nothing decoded; None when a band is missing,
    unreadable or not 2-D, or the bands disagree (:func:`read_chip` names that problem when the chip is read)."""
    shapes = set()
    for band in BANDS:
        try:
            with tifffile.TiffFile(Path(chip_dir) / f"{band}.tif") as tif:
                series = tif.series[0] if tif.series else tif.pages[0]
                shapes.add(tuple(int(d) for d in series.shape if int(d) != 1))
        except Exception:  # missing, unreadable: read_chip's own message, when the chip is read
            return None
    shape = shapes.pop() if len(shapes) == 1 else None
    return shape if shape is not None and len(shape) == 2 else None


def chip_shape_problems(features_dir: os.PathLike | str,
                        chip_ids: Sequence[str]) -> Tuple[Optional[Tuple[int, int]], Dict[str, str]]:
    """The one rule of a chip's shape: a chip is square, side x side pixels, and all the chips of a folder have one
    side (the On Cloud N contract: 512 x 512). The folder's shape is that of most of its chips (ties: the first
    chip's). From the TIFF headers, nothing decoded. Returns (the folder's (H, W) or None when no chip is
    readable, {chip_id: problem} of the chips that break the rule; chips whose bands cannot be read or disagree
    are left to :func:`read_chip`)."""
    from collections import Counter

    features_dir = Path(features_dir)
    shapes = {c: chip_shape(features_dir / c) for c in chip_ids}
    counts = Counter(s for s in shapes.values() if s is not None)
    if not counts:
        return None, {}
    top = max(counts.values())
    want = next(s for s in shapes.values() if s is not None and counts[s] == top)
    bad = {}
    for c, s in shapes.items():
        if s is None:
            continue
        if s != want:
            bad[c] = (f"bands of {s[0]}x{s[1]} pixels, but the chips of {features_dir} are {want[0]}x{want[1]} (a "
                      f"chip is square, one size for the folder; On Cloud N: 512x512)")
        elif s[0] != s[1]:
            bad[c] = f"bands of {s[0]}x{s[1]} pixels: a chip must be square (side x side; On Cloud N: 512x512)"
    return want, bad


def check_chip_shapes(features_dir: os.PathLike | str, chip_ids: Sequence[str]) -> Optional[Tuple[int, int]]:
    """:func:`chip_shape_problems` as every predictor applies it before it predicts anything: a chip that breaks
    the rule is a :class:`DataError` naming it (``submission/main.py``, which must never fail, gives such a chip its
    documented fallback instead: an all-clear mask of the chip size, logged). Returns the folder's (H, W)."""
    want, bad = chip_shape_problems(features_dir, chip_ids)
    if bad:
        c = next(iter(bad))
        more = f" (and {len(bad) - 1} more chip(s))" if len(bad) > 1 else ""
        raise DataError(f"{Path(features_dir) / c}: {bad[c]}{more}")
    return want


def read_mask(path: os.PathLike | str, shape: Optional[Tuple[int, int]] = None, what: str = "mask") -> np.ndarray:
    """A binary mask file (label or prediction) as uint8 (H, W) with values in {0, 1}."""
    path = Path(path)
    arr = _read_tiff(path, f"{what} file")
    if arr.dtype.kind not in "uib":
        raise DataError(f"{path}: wrong dtype {arr.dtype}, expected an integer {what} with values 0/1")
    if shape is not None and arr.shape != tuple(shape):
        raise DataError(f"{path}: wrong shape {arr.shape}, expected {tuple(shape)}")
    if arr.size and (arr.max() > 1 or arr.min() < 0):
        bad = np.unique(arr[(arr < 0) | (arr > 1)])[:5].tolist()
        raise DataError(f"{path}: {what} values outside {{0, 1}} (found {bad})")
    return arr.astype(np.uint8, copy=False)


def list_masks(folder: os.PathLike | str) -> Dict[str, Path]:
    """``{chip_id: path}`` for the ``*.tif`` files of a folder (hidden / temporary files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    return {e.name[:-4]: Path(e.path) for e in os.scandir(folder)
            if e.is_file() and e.name.endswith(".tif") and not e.name.startswith(".")}




def read_label(path: os.PathLike | str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A label file as uint8 (H, W) with values in {0, 1} (1 = cloud)."""
    return read_mask(path, shape, what="label")


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------
def write_mask(path: os.PathLike | str, mask: np.ndarray, extratags: Sequence = ()) -> Path:
    """Write a binary mask in the submission format: single band uint8 {0,1}, uncompressed, PIL-readable."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: a mask must be 2-D, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        mask = (mask > 0).astype(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    if mask.size and mask.max() > 1:
        raise ValueError(f"{path}: mask values must be 0 or 1, found max {mask.max()}")
    return atomic_write(
        path,
        lambda tmp: tifffile.imwrite(
            tmp, mask, photometric="minisblack", compression=None, metadata=None, extratags=list(extratags)
        ),
    )


def write_band(path: os.PathLike | str, dn: np.ndarray, extratags: Sequence = (), datetime: Optional[str] = None):
    """Write one uint16 band file (GeoTIFF-style: uncompressed, strips of 8 rows, GDAL nodata 0)."""
    dn = np.asarray(dn)
    if dn.dtype != np.uint16 or dn.ndim != 2:
        raise ValueError(f"{path}: a band must be 2-D uint16, got {dn.dtype} {dn.shape}")
    return atomic_write(
        path,
        lambda tmp: tifffile.imwrite(
            tmp, dn, photometric="minisblack", compression=None, metadata=None, rowsperstrip=8,
            extratags=list(extratags), datetime=datetime,
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# Metadata and the index of a split
# ----------------------------------------------------------------------------------------------------------------
def read_metadata(path: os.PathLike | str) -> pd.DataFrame:
    """Read a ``*_metadata.csv``; chip ids are kept as strings, required columns are checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata CSV does not exist")
    try:
        df = pd.read_csv(path, dtype={"chip_id": str, "location": str}, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None
    missing = [c for c in METADATA_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected at least {list(METADATA_COLUMNS)}")
    dup = df["chip_id"][df["chip_id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{path}: duplicated chip_id(s) {dup[:10]}")
    return df


def load_index(split: Split, require_labels: Optional[bool] = None) -> pd.DataFrame:
    """A table of the split's chips: ``chip_id, location, datetime, features, label`` (label '' if absent).

    The metadata CSV and the features folders must list the same chips; with labels (``require_labels`` or,
    when None, whenever the labels folder exists) every chip must have a label file.
    Raises :class:`DataError` naming the chips that do not match, or when the dataset's generation did not finish.
    """
    unfinished = unfinished_problem(split.root)
    if unfinished:
        raise DataError(unfinished)
    ids = split.chip_ids()
    if split.metadata_csv.is_file():
        meta = read_metadata(split.metadata_csv)
    else:
        raise DataError(f"{split.metadata_csv}: metadata CSV does not exist")
    _check_same_chips(split, ids, meta["chip_id"].tolist())
    meta = meta.set_index("chip_id").loc[ids].reset_index()
    meta["features"] = [str(split.chip_dir(c)) for c in ids]
    with_labels = split.has_labels if require_labels is None else require_labels
    if with_labels:
        if not split.labels_dir.is_dir():
            raise DataError(f"{split.labels_dir}: labels folder does not exist")
        missing = [c for c in ids if not split.label_path(c).is_file()]
        if missing:
            raise DataError(f"{split.labels_dir}: no label file for {len(missing)} chip(s): {_few(missing)}")
        meta["label"] = [str(split.label_path(c)) for c in ids]
    else:
        meta["label"] = ""
    return meta


def _few(items: Sequence[str], n: int = 10) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def _check_same_chips(split: Split, folder_ids: Iterable[str], csv_ids: Iterable[str]) -> None:
    folder_ids, csv_ids = set(folder_ids), set(csv_ids)
    only_csv = sorted(csv_ids - folder_ids)
    only_dir = sorted(folder_ids - csv_ids)
    problems = []
    if only_csv:
        problems.append(f"{len(only_csv)} chip(s) in {split.metadata_csv.name} without a folder in "
                        f"{split.features_dir}: {_few(only_csv)}")
    if only_dir:
        problems.append(f"{len(only_dir)} chip folder(s) in {split.features_dir} not listed in "
                        f"{split.metadata_csv}: {_few(only_dir)}")
    if problems:
        raise DataError("; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Validation of a whole split
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    split: Split
    n_chips: int
    shape: Optional[Tuple[int, int]]
    errors: List[str]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_failed(self, limit: int = 20, context: str = "", after: str = "") -> None:
        """Raise one :class:`DataError` listing the first ``limit`` problems (``context`` before the message,
        ``after`` at the end of its first line)."""
        if self.errors:
            raise DataError(f"{context}{self.split.root}: {len(self.errors)} problem(s) in split "
                            f"'{self.split.name}'{after}:\n{problems(self.errors, limit)}")


def validate_split(split: Split, shape: Optional[Tuple[int, int]] = None, labels: Optional[bool] = None,
                   progress: bool = False) -> ValidationReport:
    """Read every band and label of a split and collect every problem (nothing is raised here).

    Checks: an interrupted generation (the :data:`UNFINISHED` marker), metadata CSV vs folders (both directions),
    missing band, unreadable/corrupt TIFF, dtype, shape (bands of a chip agree with each other, with the label, and
    with ``shape`` or else with the first chip's shape: mixed chip sizes are reported), label values outside
    {0, 1}, missing label files.
    """
    errors: List[str] = []
    unfinished = unfinished_problem(split.root)
    if unfinished:
        errors.append(unfinished)
    try:
        ids = split.chip_ids()
    except DataError as exc:
        return ValidationReport(split, 0, shape, errors + [str(exc)])
    try:
        _check_same_chips(split, ids, read_metadata(split.metadata_csv)["chip_id"].tolist())
    except DataError as exc:
        errors.append(str(exc))
    with_labels = split.has_labels if labels is None else labels
    if with_labels and not split.labels_dir.is_dir():
        errors.append(f"{split.labels_dir}: labels folder does not exist")
        with_labels = False
    want = tuple(shape) if shape is not None else None
    iterator = ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ids, desc=f"validate {split.name}", unit="chip")
    for chip_id in iterator:
        try:
            dn = read_chip_dn(split.chip_dir(chip_id), want)
        except DataError as exc:
            errors.append(f"chip {chip_id}: {exc}")
            continue
        if want is None:
            want = dn.shape[1:]
        if with_labels:
            try:
                read_label(split.label_path(chip_id), want)
            except DataError as exc:
                errors.append(f"chip {chip_id}: {exc}")
    return ValidationReport(split, len(ids), want, errors)
