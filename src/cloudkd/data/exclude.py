"""Chips to leave out of training: ``--exclude FILE`` on every command that reads a training set.

A label audit (``cloudkd evaluate audit --exclude-out FILE``) writes the ids of suspicious chips; ``data folds``,
``student train`` / ``distill``, ``teacher prepare`` and ``baseline threshold fit`` take that file as
``--exclude FILE`` and leave the chips out. The file is plain text, one chip id per line; blank lines and lines
starting with ``#`` are ignored and surrounding whitespace is stripped. A CSV with a ``chip_id`` column (e.g. an
``audit.csv``) is read as its ``chip_id`` column. The option itself: :func:`cloudkd.common.cli.exclude_option`.

Every listed id must be a chip of the split being read: an unknown id is a :class:`DataError` naming the file and
the ids, raised before any long work or any output. Excluded chips are counted and the caller logs one line
(:func:`exclude_message`); they are never dropped silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

import pandas as pd

from ..common.errors import DataError


def read_exclude(path: os.PathLike | str) -> List[str]:
    """The chip ids listed in ``path``, in file order, each once (see the module doc for the format)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file of chip ids (one per line)")
    if not path.is_file():
        raise DataError(f"{path}: exclude file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable exclude file ({type(exc).__name__}: {exc})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and "chip_id" in [c.strip() for c in lines[0].split(",")]:
        try:  # a CSV with a chip_id column, e.g. an audit.csv
            ids = pd.read_csv(path, dtype={"chip_id": str}, keep_default_na=False, comment="#")["chip_id"]
        except Exception as exc:
            raise DataError(f"{path}: unreadable CSV ({exc})") from None
        lines = [str(c).strip() for c in ids if str(c).strip()]
    return list(dict.fromkeys(lines))


def check_exclude(ids: Sequence[str], chip_ids: Iterable[str], path: os.PathLike | str,
                  where: os.PathLike | str) -> None:
    """Raise :class:`DataError` unless every id of ``ids`` (read from ``path``) is one of ``chip_ids`` (the chips
    of the split ``where``)."""
    known = set(chip_ids)
    unknown = [c for c in ids if c not in known]
    if unknown:
        few = ", ".join(unknown[:5]) + (f", ... (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise DataError(f"{path}: {len(unknown)} listed chip id(s) not in {where}: {few}")


def exclude_ids(index: pd.DataFrame, path: os.PathLike | str, where: os.PathLike | str,
                ids: Sequence[str] = None) -> List[str]:
    """The chip ids listed in ``path`` (``ids``: already read from it), each once, checked against ``index`` (a
    chip table of the split ``where``): the chips :func:`cloudkd.data.folds.training_split` sets to fold -1."""
    ids = read_exclude(path) if ids is None else list(dict.fromkeys(ids))
    check_exclude(ids, index["chip_id"], path, where)
    return ids


def apply_exclude(index: pd.DataFrame, path: os.PathLike | str, where: os.PathLike | str,
                  ids: Sequence[str] = None) -> Tuple[pd.DataFrame, int]:
    """``index`` (a chip table of the split ``where``, :func:`cloudkd.data.chips.load_index`) without the chips
    listed in ``path`` (``ids``: already read from it), and how many chips that left out."""
    drop = index["chip_id"].isin(set(exclude_ids(index, path, where, ids)))
    return index[~drop].reset_index(drop=True), int(drop.sum())


def exclude_message(n: int, total: int, path: os.PathLike | str) -> str:
    """The one line a command logs when it leaves chips out."""
    return f"excluding {n} of {total} chips listed in {path}"
