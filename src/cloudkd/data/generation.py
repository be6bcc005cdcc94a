"""A generated dataset's root, shared by the Sentinel-2 and Landsat generators: claimed before writing (emptied
only when a generator wrote it, the :data:`~cloudkd.common.outputs.UNFINISHED` marker first), finished after (the
stamp, then the marker goes), reused when its stamp records the same config."""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

from ..common.errors import DataError
from ..common.io import atomic_write
from ..common.outputs import STAMPS, UNFINISHED, folder_mark, running_elsewhere


@dataclass
class SynthResult:
    root: Path
    n_train: int
    n_test: int
    seconds: float
    reused: bool
    cloud_fraction: Dict[str, float] = field(default_factory=dict)


def claim_root(root: Path, stamp: Path, want: dict, overwrite: bool) -> bool:
    """Make ``root`` ready for a generator: True when ``stamp`` (written last) records the same config, so the
    dataset is complete and reused; else an empty ``root`` (emptied only with ``overwrite``; a folder holding
    anything else, or another config, is refused) holding only the :data:`~cloudkd.data.chips.UNFINISHED` marker,
    which :func:`finish_root` removes after writing the stamp.

    A folder still holding the marker is an interrupted generation: never reused (even with a stamp), it is emptied
    and generated again (everything in it was written by a generator), unless the generation is still running.

    The output policy: ``overwrite`` empties only a folder a generator of this kind wrote (its ``stamp`` or the
    marker); any other folder that is not empty (a real dataset, a user's folder) is refused even with it."""
    marker = root / UNFINISHED
    if marker.is_file():
        pid = running_elsewhere(marker)
        if pid is not None:
            raise DataError(f"{root}: another generation (pid {pid}) is still writing this folder ({marker})")
        overwrite = True  # an interrupted generation: start again from an empty folder
        stamp.unlink(missing_ok=True)
    if stamp.is_file() and not overwrite:
        try:
            have = json.loads(stamp.read_text()).get("config")
        except json.JSONDecodeError:
            have = None
        if have == want:
            return True
        raise DataError(f"{root}: holds a generated dataset with a different config ({stamp}); "
                        f"choose another folder or pass overwrite")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"{root}: folder is not empty; choose another folder or pass overwrite")
        note = folder_mark(root)
        if note is None:
            raise DataError(f"{root} was not written by cloudkd; remove it yourself (or choose another folder)")
        if note["kind"] not in (STAMPS[stamp.name], STAMPS[UNFINISHED]):
            raise DataError(f"{root}: holds cloudkd's {note['kind']}, not a {STAMPS[stamp.name]}; choose another "
                            f"folder")
        for sub in root.iterdir():
            if sub.name != UNFINISHED:
                shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, lambda tmp: tmp.write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "config": want,
         "note": "a generation is writing this folder; if no generator runs, it was interrupted: run it again"},
        indent=2)))
    return False


def finish_root(root: Path, stamp: Path, info: dict) -> None:
    """End a generation started by :func:`claim_root`: the stamp (``info``) first, then the marker goes, so a
    folder is complete exactly when it holds the stamp and no marker."""
    atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    (root / UNFINISHED).unlink(missing_ok=True)
