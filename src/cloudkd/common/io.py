"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

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


def claim_masks_folder(folder: os.PathLike | str, producer: str, force: bool = False,
                       fingerprint: Optional[str] = None) -> Path:
    """Make ``folder`` ready for the masks of ``producer`` (whose weights have ``fingerprint``):
    :func:`cloudkd.common.outputs.claim_masks_folder` (the output policy's rule, kept here for its callers)."""
    from .outputs import claim_masks_folder as claim

    return claim(folder, producer, force, fingerprint)
