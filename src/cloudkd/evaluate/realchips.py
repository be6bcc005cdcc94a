"""The real-chip benchmark: any mix of models scored side by side on a labelled chip folder.

Every method writes its masks with its own library path (the same code ``cloudkd predict``, ``teacher predict``
and ``baseline threshold predict`` use) into ``OUT/predictions/{method}``, and every folder is scored by
:func:`cloudkd.evaluate.scoring.score_folder` (the leaderboard metric), so the figures are the ones the leaderboard and
``cloudkd score`` would give. Outputs under ``OUT``:

* ``per_chip.csv``: method, chip, IoU, precision, recall, cloud fraction of label and prediction;
* ``summary.csv`` / ``summary.json``: per method the global Jaccard, precision, recall, parameters, bytes and
  seconds per chip;
* ``real_chips.png``: RGB, NIR, label and every method's mask, one row per chip;
* ``bands.csv`` / ``bands.png``: per method, recall of the labelled cloud and precision of the predicted cloud
  by band of mean visible reflectance, and the share of the labelled cloud in each band
  (:mod:`cloudkd.evaluate.bands`): which cloud, dim or bright, a method misses.

Methods (:class:`Method`): fitted thresholding (``threshold.json``), an nnU-Net teacher workdir, student runs,
exported ONNX models, and the ukis-csmask peer (only when installed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pandas as pd

from ..common.errors import DataError
from ..common.io import atomic_write
from ..data.roots import resolve_split


@dataclass
class Method:
    """A named way to write masks for a features folder: ``predict(features_dir, out_dir)``."""

    name: str
    predict: Callable[[Path, Path], object]
    params: Optional[int] = None
    bytes: Optional[int] = None


def threshold_method(path: os.PathLike | str, name: str = "thresholding") -> Method:
    from ..baselines.threshold import ThresholdModel, predict_folder

    model = ThresholdModel.load(path)
    return Method(name, lambda f, o: predict_folder(model, f, o), 2, Path(path).stat().st_size)


def student_method(run: os.PathLike | str, name: Optional[str] = None) -> Method:
    from ..student.predictor import load_predictor

    m = load_predictor(run, kind="student")  # masks by the run's own prediction rule (its threshold and dilation)
    return predictor_method(m, name)


def onnx_method(path: os.PathLike | str, name: Optional[str] = None) -> Method:
    from ..student.predictor import load_predictor

    return predictor_method(load_predictor(path, kind="onnx"), name)  # the rule the export recorded in the model


def predictor_method(m, name: Optional[str] = None) -> Method:
    """The method of a loaded student or ONNX :class:`cloudkd.student.predictor.Predictor`: its masks by its
    recorded prediction rule (threshold and dilation)."""
    from ..student.predict import predict_folder

    return Method(name or m.name, lambda f, o: predict_folder(m.model, f, o, threshold=m.threshold, progress=False,
                                                              dilate=m.dilate), m.params, m.bytes)


def nnunet_method(workdir: os.PathLike | str, name: str = "nnU-Net teacher") -> Method:
    from ..student.predictor import load_predictor
    from ..teacher.model import predict_folder

    m = load_predictor(workdir, kind="nnunet")
    return Method(name, lambda f, o: predict_folder(m.model, f, o, None, progress=False), m.params, m.bytes)


def peer_method() -> Method:
    from ..teacher import peer

    return Method(f"{peer.NAME} (peer)", lambda f, o: peer.predict_folder(f, o), peer.params(),
                  peer.model_file().stat().st_size)


@dataclass
class RealBenchResult:
    rows: List[dict]  # one per method, as in summary.csv (params and bytes stay ints or None)
    summary: pd.DataFrame
    per_chip: pd.DataFrame
    figure: Path
    out: Path
    bands: Optional[pd.DataFrame] = None  # bands.csv: recall and precision by brightness band, per method


def method_folder(out: os.PathLike | str, name: str) -> Path:
    """Where a method's masks go: ``out/predictions/{name with unsafe characters replaced}``."""
    return Path(out) / "predictions" / "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def run_real_bench(data: os.PathLike | str, methods: Sequence[Method], out: os.PathLike | str,
                   split: Optional[str] = None, progress: bool = True) -> RealBenchResult:
    """Predict a labelled split of ``data`` (``split``; default train, or test for a root with test labels
    only) with every method, score each with the leaderboard metric and write the tables and the figure under
    ``out``."""
    from .bands import bands_of_folders, plot_bands
    from .scoring import score_folder
    from ..data.viz import plot_chips

    if not methods:
        raise DataError("the real-chip benchmark needs at least one method to score")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise DataError(f"two methods share a name: {names}")
    if split is None and not (Path(data) / "train_labels").is_dir() and (Path(data) / "test_labels").is_dir():
        split = "test"
    split = resolve_split(data, split)
    if not split.has_labels:
        raise DataError(f"{split.root}: the real-chip benchmark needs labels ({split.labels_dir} not found)")
    out = Path(out)
    ids = split.chip_ids()
    rows: List[dict] = []
    chips: List[pd.DataFrame] = []
    folders = {}
    for m in methods:
        folder = method_folder(out, m.name)
        t0 = time.perf_counter()
        m.predict(split.features_dir, folder)
        seconds = time.perf_counter() - t0
        rep = score_folder(folder, split.labels_dir, chips=ids)
        if not rep.ok:
            raise DataError(f"{m.name}: incomplete or invalid predictions in {folder}: missing {rep.missing[:5]}, "
                            f"invalid {rep.invalid[:5]}")
        per = rep.per_chip.copy()
        per.insert(0, "method", m.name)
        chips.append(per[["method", "chip_id", "iou", "precision", "recall", "cloud_frac_label",
                          "cloud_frac_pred", "tp", "fp", "fn", "tn"]])
        rows.append({"method": m.name, "jaccard": rep.jaccard, "precision": rep.total.precision,
                     "recall": rep.total.recall, "params": m.params, "bytes": m.bytes,
                     "s_per_chip": round(seconds / len(ids), 3)})
        folders[m.name] = folder
        if progress:
            print(f"{m.name}: global Jaccard {rep.jaccard:.4f} (precision {rep.total.precision:.3f}, recall "
                  f"{rep.total.recall:.3f}) on {len(ids)} chips", flush=True)
    summary = pd.DataFrame(rows)
    per_chip = pd.concat(chips, ignore_index=True)
    atomic_write(out / "summary.csv", lambda t: summary.to_csv(t, index=False))
    atomic_write(out / "per_chip.csv", lambda t: per_chip.to_csv(t, index=False))
    atomic_write(out / "summary.json", lambda t: Path(t).write_text(json.dumps(
        {"data": str(split.root), "chips": ids, "methods": rows}, indent=2, default=float)))
    fig = plot_chips(split, ids, out / "real_chips.png", folders,
                     title=f"{split.root.name}: {len(ids)} labelled chips")
    bands = bands_of_folders(split.features_dir, split.labels_dir, folders, ids)
    atomic_write(out / "bands.csv", lambda t: bands.to_csv(t, index=False))
    plot_bands(bands, out / "bands.png", title=f"{split.root.name}: cloud by brightness ({len(ids)} chips)")
    return RealBenchResult(rows, summary, per_chip, fig, out, bands)
