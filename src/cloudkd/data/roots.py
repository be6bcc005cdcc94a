"""Any dataset root -> a split in the On Cloud N layout: the one entry every command uses to find its chips.

A root may be in the On Cloud N layout itself, or a 38-Cloud / 95-Cloud root (Landsat-8 patches), which resolves
to its On Cloud N view, imported once by :func:`cloudkd.data.landsat.reader.ensure_imported`. The chip reader
(:mod:`.chips`) knows only the On Cloud N layout; this module joins the two.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..common.errors import DataError
from .chips import Split
from .landsat.reader import ensure_imported, is_38cloud


def resolve_split(path: os.PathLike | str, split: Optional[str] = None) -> Split:
    """Find a split from a dataset root (``ROOT`` with ``ROOT/{split}_features``) or a ``*_features`` folder.

    With ``split=None`` a root holding ``train_features`` resolves to ``train``, else to ``test``.
    A 38-Cloud / 95-Cloud root (Landsat-8 patches) resolves to its On Cloud N view, imported once by
    :func:`cloudkd.data.landsat.reader.ensure_imported`, so every command accepts it as it is.
    """
    p = Path(path)
    if is_38cloud(p):
        p = ensure_imported(p)
    if p.name.endswith("_features") and p.is_dir():
        name = p.name[: -len("_features")]
        if split is not None and split != name:
            raise DataError(f"{p}: is the '{name}' features folder, but split '{split}' was asked for")
        return Split(p.parent, name)
    if not p.is_dir():
        raise DataError(f"{p}: dataset folder does not exist")
    candidates = [split] if split else ["train", "test"]
    for name in candidates:
        if (p / f"{name}_features").is_dir():
            return Split(p, name)
    wanted = " or ".join(f"{c}_features/" for c in candidates)
    raise DataError(f"{p}: no {wanted} folder: not a dataset in the On Cloud N layout")
