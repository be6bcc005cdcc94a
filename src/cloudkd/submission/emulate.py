"""``cloudkd runtime-test``: run a submission.zip the way the On Cloud N runtime does, locally.

1. A scratch root laid out like ``/codeexecution``: ``data/test_features`` (a copy of the chips, made read-only;
   root ignores file modes, so under root it stays writable), ``submission/submission.zip``;
2. the zip is unpacked into the root (its top level lands there, as ``unzip ./submission/submission.zip -d ./``);
   the run fails if there is no ``main.py`` or no ``*.tif`` under ``data/test_features``;
3. ``python main.py`` with no arguments, in the root, as a subprocess (``CLOUDKD_ROOT`` points main.py at the
   scratch root instead of /codeexecution);
4. the runtime's validation (:mod:`cloudkd.submission.validate`): no missing file, no extra file, shape,
   values, size; with labels, the leaderboard metric (global Jaccard).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional

from ..common.errors import DataError
from ..common.io import atomic_write
from ..data.roots import resolve_split
from .validate import reasons, validate


def _read_only(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _writable(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, stat.S_IRWXU)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), stat.S_IRUSR | stat.S_IWUSR)


def runtime_test(zip_path: os.PathLike | str, data: os.PathLike | str, labels: Optional[os.PathLike | str] = None,
                 json_out: Optional[os.PathLike | str] = None, size: Optional[int] = None,
                 keep: Optional[os.PathLike | str] = None, python: str = sys.executable,
                 timeout: Optional[float] = None, echo: bool = True) -> dict:
    """Emulate the runtime on the chips of ``data`` (a dataset root or a ``*_features`` folder); a verdict dict."""
    zip_path = Path(zip_path)
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{zip_path}: not a zip file")
    data = Path(data)
    features = data if data.name.endswith("_features") else resolve_split(data, "test").features_dir
    if not features.is_dir():
        raise DataError(f"{features}: features folder does not exist")
    if labels is not None:
        labels = Path(labels)
        labels = labels / "test_labels" if (labels / "test_labels").is_dir() else labels
        if not labels.is_dir():
            raise DataError(f"{labels}: labels folder does not exist")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="cloudkd-runtime-"))
    if keep and root.exists():
        _writable(root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    verdict = {"ok": False, "n_chips": 0, "missing": [], "extra": [], "invalid": {}, "seconds": None,
               "returncode": None, "jaccard": None, "reasons": [], "root": str(root)}
    try:
        shutil.copytree(features, root / "data" / "test_features")
        meta = features.parent / "test_metadata.csv"
        if meta.is_file():
            shutil.copy(meta, root / "data" / "test_metadata.csv")
        _read_only(root / "data")
        (root / "submission").mkdir()
        shutil.copy(zip_path, root / "submission" / "submission.zip")
        with zipfile.ZipFile(root / "submission" / "submission.zip") as z:
            z.extractall(root)
        if not (root / "main.py").is_file():
            verdict["reasons"] = ["the zip has no main.py at its top level"]
            return verdict
        if not any((root / "data" / "test_features").rglob("*.tif")):
            verdict["reasons"] = ["no *.tif under data/test_features"]
            return verdict
        if size is None:
            cfg_path = root / "assets" / "config.json"
            size = json.loads(cfg_path.read_text()).get("chip_size", 512) if cfg_path.is_file() else 512
        env = {**os.environ, "CLOUDKD_ROOT": str(root)}
        t0 = time.perf_counter()
        with open(root / "main.log", "w") as logf:
            proc = subprocess.Popen([python, "main.py"], cwd=root, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                logf.write(line)
                if echo:
                    print("  | " + line.rstrip(), flush=True)
            proc.wait(timeout=timeout)
        verdict["seconds"] = round(time.perf_counter() - t0, 2)
        verdict["returncode"] = proc.returncode
        verdict.update(validate(root / "data" / "test_features", root / "predictions", (size, size)))
        verdict["reasons"] = reasons(verdict)
        if proc.returncode != 0:
            verdict["ok"] = False
            verdict["reasons"].insert(0, f"main.py exited with code {proc.returncode} (log: {root / 'main.log'})")
        if labels is not None and not verdict["missing"] and not verdict["invalid"]:
            from ..evaluate.scoring import score_folder

            report = score_folder(root / "predictions", labels)
            verdict["jaccard"] = report.jaccard
        verdict["log"] = (root / "main.log").read_text()[-5000:]
        return verdict
    finally:
        if json_out:
            atomic_write(json_out, lambda t: Path(t).write_text(json.dumps(
                {k: v for k, v in verdict.items() if k != "log"}, indent=2)))
        if not keep:
            _writable(root)
            shutil.rmtree(root, ignore_errors=True)
