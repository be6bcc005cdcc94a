"""Location-grouped K folds: no location is ever in two folds, so validation always means unseen places.

Folds are written to / read from a CSV (``chip_id,location,fold``) so that every experiment (threshold, teacher,
student) uses the same split. Fold :data:`EXCLUDED` (-1) marks chips left out of every fold (``cloudkd data folds
--exclude``): they are in neither part of any split, and no location check counts them.

One split (:func:`training_split`): folds are assigned on the full chip table, and the excluded chips are then
set to fold -1, so excluding a chip never moves another chip to another fold. Every command that reads a training
set with ``--exclude`` (``data folds``, ``student train`` / ``distill``, ``teacher prepare``, ``baseline threshold
fit``) splits through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np
import pandas as pd

from ..common.errors import DataError
from ..common.io import atomic_write

#: the fold of chips left out of every fold (``data folds --exclude``): never trained on, never validated on
EXCLUDED = -1


def make_folds(index: pd.DataFrame, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Assign every location to one of ``k`` folds, balancing the number of chips per fold.

    Greedy: locations in decreasing chip count (ties broken by a seeded shuffle) go to the fold with the fewest
    chips so far. Returns ``chip_id, location, fold`` sorted by chip_id.
    """
    if k < 2:
        raise ValueError(f"need k >= 2 folds, got {k}")
    for col in ("chip_id", "location"):
        if col not in index.columns:
            raise DataError(f"cannot make folds: the chip table has no '{col}' column")
    counts = index.groupby("location").size()
    if len(counts) < k:
        raise DataError(f"cannot make {k} location-grouped folds from {len(counts)} location(s): "
                        f"{sorted(counts.index)}; use fewer folds")
    rng = np.random.default_rng(seed)
    locs = list(counts.index)
    order = rng.permutation(len(locs))
    locs = [locs[i] for i in order]
    locs.sort(key=lambda name: -counts[name])  # stable: shuffled order breaks ties
    load = np.zeros(k, int)
    n_locs = np.zeros(k, int)
    fold_of = {}
    for name in locs:
        f = int(np.lexsort((n_locs, load))[0])  # fewest chips, then fewest locations
        fold_of[name] = f
        load[f] += counts[name]
        n_locs[f] += 1
    out = index[["chip_id", "location"]].copy()
    out["fold"] = out["location"].map(fold_of).astype(int)
    return out.sort_values("chip_id").reset_index(drop=True)


def check_folds(folds: pd.DataFrame, source: str = "folds") -> None:
    """Raise :class:`DataError` if a location appears in more than one fold, a chip is listed twice or a fold is
    not a whole number >= 0 or :data:`EXCLUDED` (-1: left out; its chips share locations with any fold)."""
    for col in ("chip_id", "location", "fold"):
        if col not in folds.columns:
            raise DataError(f"{source}: missing column '{col}' (expected chip_id, location, fold)")
    dup = folds["chip_id"][folds["chip_id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{source}: chip(s) listed twice: {dup[:10]}")
    fold = pd.to_numeric(folds["fold"], errors="coerce")
    bad = folds["chip_id"][fold.isna() | (fold != fold.round()) | (fold < EXCLUDED)].tolist()
    if bad:
        raise DataError(f"{source}: fold must be a whole number >= 0 (or {EXCLUDED}: left out) for chip(s) {bad[:10]}")
    folds = folds[fold != EXCLUDED]
    per_loc = folds.groupby("location")["fold"].nunique()
    leaks = per_loc[per_loc > 1]
    if len(leaks):
        detail = {loc: sorted(folds.loc[folds.location == loc, "fold"].unique().tolist()) for loc in leaks.index}
        raise DataError(f"{source}: location(s) in more than one fold (a leak): {detail}")


def write_folds(folds: pd.DataFrame, path: os.PathLike | str) -> Path:
    check_folds(folds, str(path))
    return atomic_write(path, lambda tmp: folds[["chip_id", "location", "fold"]].to_csv(tmp, index=False))


def read_folds(path: os.PathLike | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds CSV does not exist")
    df = pd.read_csv(path, dtype={"chip_id": str, "location": str}, keep_default_na=False)
    check_folds(df, str(path))
    df["fold"] = df["fold"].astype(int)
    return df


def excluded_by_folds(index: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """The chips of ``index`` that ``folds`` leaves out of every fold (fold :data:`EXCLUDED`)."""
    left_out = set(folds["chip_id"][folds["fold"] == EXCLUDED])
    return index[index["chip_id"].isin(left_out)].reset_index(drop=True)


def folds_exclusion_message(n: int, total: int, source: os.PathLike | str) -> str:
    """The one line a reader of a folds file logs for the chips it leaves out (fold -1)."""
    return f"excluding {n} of {total} chips left out of every fold (fold {EXCLUDED}) in {source}"


def folds_exclusion_line(index: pd.DataFrame, folds: pd.DataFrame, exclude: Iterable[str],
                         source: os.PathLike | str) -> Optional[str]:
    """The line to log for the chips of ``index`` that ``folds`` (read from ``source``) leaves out (fold -1),
    beside the ones ``exclude`` lists; None when there are none."""
    rest = index[~index["chip_id"].isin(set(exclude))]
    n = len(excluded_by_folds(rest, folds))
    return folds_exclusion_message(n, len(rest), source) if n else None


def training_split(index: pd.DataFrame, folds: Optional[pd.DataFrame] = None, exclude: Iterable[str] = (),
                   k: int = 5, seed: int = 0, source: str = "the folds") -> pd.DataFrame:
    """The fold of every chip of ``index`` (``chip_id, location, fold``, sorted by chip_id): ``folds`` (a folds
    table, e.g. :func:`read_folds` of ``source``; every chip of ``index`` must be in it) or, when None,
    :func:`make_folds` (``k``, ``seed``) of the FULL ``index``; then the chips listed in ``exclude`` get fold
    :data:`EXCLUDED`. Folds come before the exclusion, so excluding chips never moves another chip's fold."""
    if folds is None:
        table = make_folds(index, k=k, seed=seed)
    else:
        missing = sorted(set(index["chip_id"]) - set(folds["chip_id"]))
        if missing:
            raise DataError(f"{source}: {len(missing)} chip(s) have no fold assigned: {missing[:10]}")
        table = folds.loc[folds["chip_id"].isin(set(index["chip_id"])), ["chip_id", "location", "fold"]].copy()
        table["fold"] = table["fold"].astype(int)
    table.loc[table["chip_id"].isin(set(exclude)), "fold"] = EXCLUDED
    return table.sort_values("chip_id").reset_index(drop=True)


def split_by_fold(index: pd.DataFrame, folds: pd.DataFrame, val_fold: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) parts of a chip table: validation = chips of ``val_fold``. Every chip must be in folds;
    chips of fold :data:`EXCLUDED` (-1) are in neither part (:func:`excluded_by_folds` lists them)."""
    fold_of = folds.set_index("chip_id")["fold"]
    missing = sorted(set(index["chip_id"]) - set(fold_of.index))
    if missing:
        raise DataError(f"{len(missing)} chip(s) have no fold assigned: {missing[:10]}")
    real = sorted(int(v) for v in set(fold_of.values) if v != EXCLUDED)
    if val_fold == EXCLUDED:
        raise DataError(f"fold {EXCLUDED} marks the chips left out of every fold; it cannot be the validation fold "
                        f"(folds: {real})")
    if val_fold not in real:
        raise DataError(f"fold {val_fold} does not exist (folds: {real})")
    f = index["chip_id"].map(fold_of)
    train = (f != val_fold) & (f != EXCLUDED)
    return index[train].reset_index(drop=True), index[f == val_fold].reset_index(drop=True)
