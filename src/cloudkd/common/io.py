"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# the process umask, read once: files written through a temporary name get the usual permissions
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: os.PathLike | str, write, suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` on a temporary name in the same folder, then rename it to ``path``.

    A crash leaves no half-written ``path`` behind (the temporary name starts with '.').
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: the file in a folder of masks that says which model wrote them
MASKS_RECORD = ".cloudkd-masks.json"


def claim_masks_folder(folder: os.PathLike | str, producer: str, force: bool = False) -> Path:
    """Make ``folder`` ready for the masks of ``producer`` (a model, named by its path and settings).

    A folder written by another producer is refused unless ``force``, which first removes its masks, so the
    masks of two models never mix. The folder records its producer in :data:`MASKS_RECORD`.
    """
    import json

    from .errors import DataError

    folder = Path(folder)
    record = folder / MASKS_RECORD
    masks = sorted(folder.glob("*.tif")) if folder.is_dir() else []
    have = producer if not masks else "an unknown model"  # masks without a record: nobody can vouch for them
    if record.is_file():
        try:
            have = json.loads(record.read_text()).get("producer")
        except (ValueError, OSError):
            have = None
    if have != producer:
        if not force:
            raise DataError(f"{folder}: holds masks of {have}; write elsewhere, or --force to replace them")
        for p in masks:
            p.unlink()
    atomic_write(record, lambda t: Path(t).write_text(json.dumps({"producer": producer}) + "\n"))
    return folder
