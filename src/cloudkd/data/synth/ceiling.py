"""How high can any model score on the generator's annotator labels? (``benchmarks/label_ceiling.py``)

The annotator model (:mod:`cloudkd.data.synth.annotator`) draws a random margin around the cloud it sees, so a
chip's label is one draw among many equally right outlines of the same cloud. Two measures, each scored with the
leaderboard's global Jaccard (:mod:`cloudkd.common.metrics`) against the dataset's own labels:

* **two annotators**: another independent draw of the same annotator (another random stream than the dataset's,
  :data:`~cloudkd.data.synth.sentinel2.ANNOTATOR_STREAM`) on the same image, crop and nodata wedge; several
  draws give a mean and a standard deviation;
* **oracle at the median margin**: the annotator rule on the true opacity and brightening with its margin fixed
  at its median (``margin_spread = margin_wobble = 0``, every other parameter the dataset's): what a
  deterministic model that knows the true cloud reaches by drawing the typical outline.

Every label comes from :func:`~cloudkd.data.synth.sentinel2.chip_label` on the canvas of one
:func:`~cloudkd.data.synth.sentinel2.render_chip` call, the very call that gives the dataset's label.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Dict, Iterable, List, Sequence, Union

import numpy as np

from ...common.errors import DataError
from ...common.metrics import Confusion, confusion, rates
from .annotator import AnnotatorStyle
from .catalogue import Location
from .sentinel2 import ANNOTATOR_STREAM, ChipPlan, SynthConfig, chip_label, plan_dataset, render_chip

#: keys of :func:`ceiling_labels`' dict besides the annotator streams (ints)
DATASET, ORACLE = "dataset", "oracle"
#: the CSV columns of :func:`ceiling_rows`
COLUMNS = ["name", "chips", "draws", "jaccard", "precision", "recall", "sd"]


def rebuild_plans(cfg: SynthConfig, split=None, chips: int = 0) -> List[ChipPlan]:
    """The plans of ``cfg``'s test chips, by chip id, the first ``chips`` of them (0: all), to render again. With
    ``split`` (the generated dataset's test split, :func:`cloudkd.data.resolve_split`), a split whose chips are not
    the ones ``cfg`` plans is refused (DataError), as is a config without test chips."""
    plans = sorted((p for p in plan_dataset(cfg) if p.split == "test"), key=lambda p: p.chip_id)
    if not plans:
        raise DataError("the config has no test chips")
    if split is not None and [p.chip_id for p in plans] != split.chip_ids():
        raise DataError(f"{split.features_dir}: its chips are not the ones its synth.json plans")
    return plans[: chips or None]


def check_rebuilt_label(split, chip_id: str, label: np.ndarray) -> None:
    """DataError unless the label file of ``chip_id`` in ``split`` equals ``label``, the one rendered again from
    its plan, pixel for pixel and in dtype: proof that the chip rebuilt is the dataset's."""
    from ..chips import read_label

    path = split.label_path(chip_id)
    disk = read_label(path)
    if disk.dtype != label.dtype or not np.array_equal(disk, label):
        raise DataError(f"{path}: differs from the re-rendered label of chip {chip_id} "
                        f"({np.count_nonzero(disk != label)} pixels): not the chip rebuilt")


def median_margin_style(style: AnnotatorStyle) -> AnnotatorStyle:
    """``style`` with its margin fixed at its median: no chip-to-chip spread, no wobble along the outline."""
    return replace(style, margin_spread=0.0, margin_wobble=0.0)


def oracle_label(canvas: dict, cfg: SynthConfig) -> np.ndarray:
    """The oracle label of a rendered chip (``render_chip(..., canvas=True)["canvas"]``): the annotator rule of
    ``cfg`` on the true opacity with its margin fixed at its median (uint8, 1 = cloud)."""
    return chip_label(canvas, cfg, style=median_margin_style(cfg.annotator))


def ceiling_labels(seed: int, location: Location, cfg: SynthConfig,
                   streams: Sequence[int]) -> Dict[Union[str, int], np.ndarray]:
    """The labels of one chip (uint8, size x size) the ceiling compares: :data:`DATASET` (the chip's own label,
    the dataset's), one per annotator stream of ``streams`` (keyed by the stream) and :data:`ORACLE`."""
    if cfg.label_style != "annotator":
        raise ValueError(f"the ceiling is for the annotator label rule; this config labels by {cfg.label_style!r} "
                         "(deterministic: a model that knows the opacity reaches 1.0)")
    if ANNOTATOR_STREAM in streams or len(set(streams)) != len(streams):
        raise ValueError(f"streams must be distinct and differ from the dataset's ({ANNOTATOR_STREAM}): {streams}")
    out = render_chip(seed, location, cfg, canvas=True)
    labels: Dict[Union[str, int], np.ndarray] = {DATASET: out["label"]}
    for s in streams:
        labels[s] = chip_label(out["canvas"], cfg, stream=s)
    labels[ORACLE] = oracle_label(out["canvas"], cfg)
    return labels


def ceiling_rows(chips: Iterable[Dict[Union[str, int], np.ndarray]]) -> List[dict]:
    """The ceiling's table from the labels of every chip (dicts like :func:`ceiling_labels`'s): each annotator
    draw and the oracle is the prediction, :data:`DATASET` the label, the confusions summed over all chips.

    Rows (columns :data:`COLUMNS`): ``two_annotators`` (the first stream), ``two_annotators_mean`` (every stream:
    the mean of their global Jaccards, precisions and recalls, ``sd`` the sample standard deviation of the
    Jaccards; only with two streams or more) and ``oracle_median_margin``."""
    totals: Dict[Union[str, int], Confusion] = {}
    n = 0
    for labels in chips:
        n += 1
        for key, pred in labels.items():
            if key != DATASET:
                totals[key] = totals.get(key, Confusion()) + confusion(pred, labels[DATASET])
    streams = [k for k in totals if k != ORACLE]

    def row(name, draws, r, sd=None):
        return {"name": name, "chips": n, "draws": draws, "jaccard": r["jaccard"], "precision": r["precision"],
                "recall": r["recall"], "sd": sd}

    rows = []
    if streams:
        each = [rates(totals[s]) for s in streams]
        rows.append(row("two_annotators", 1, each[0]))
        if len(streams) > 1:
            mean = {k: statistics.fmean(r[k] for r in each) for k in ("jaccard", "precision", "recall")}
            rows.append(row("two_annotators_mean", len(streams), mean,
                            statistics.stdev(r["jaccard"] for r in each)))
    if ORACLE in totals:
        rows.append(row("oracle_median_margin", None, rates(totals[ORACLE])))
    return rows


#: true-opacity bands of a model's errors (``benchmarks/error_anatomy.py``): name -> [low, high)
OPACITY_BANDS = {"clear": (0.0, 0.05), "thin": (0.05, 0.5), "dense": (0.5, float("inf"))}
#: false cloud on clear pixels within this many px of the oracle's cloud is an outline drawn wider than the
#: oracle's (the annotators' margins: median 15 px, p75 30); beyond it, ground taken for cloud
NEAR_PX = 32
#: the error classes of :func:`error_counts`, in table order
ERROR_CLASSES = ("margin_fp", "margin_fn", "model_fp_away", "model_fp_outline", "model_fp_thin", "model_fp_dense",
                 "model_fn_clear", "model_fn_thin", "model_fn_dense")


def error_counts(pred: np.ndarray, label: np.ndarray, oracle: np.ndarray, alpha: np.ndarray) -> Dict[str, int]:
    """Where a model's mask ``pred`` departs from a chip's ``label``, against what the generator knows: the
    ``oracle`` label (the annotator rule at its median margin, :func:`ceiling_labels`) and the true opacity
    ``alpha`` (all (H, W); masks boolean). Pixel counts:

    * ``union`` / ``inter``: of ``pred`` with ``label``; ``o_union`` / ``o_inter``: with ``oracle``;
      ``oo_union`` / ``oo_inter``: of ``oracle`` with ``label``;
    * ``margin_fp`` / ``margin_fn``: wrong against the label where ``pred`` equals the oracle (the label's annotator
      drew another margin: no image shows it);
    * ``model_*``: wrong against the label and the oracle, by side (``fp`` cloud the oracle does not draw, ``fn``
      oracle cloud missed) and by the pixel's opacity band (:data:`OPACITY_BANDS`); false cloud on clear pixels is
      ``model_fp_outline`` within :data:`NEAR_PX` px of the oracle's cloud and ``model_fp_away`` beyond.

    The error classes add up to ``union - inter``."""
    pred, label, oracle = (np.asarray(m, bool) for m in (pred, label, oracle))
    c = {}
    for key, (a, b) in {"": (pred, label), "o_": (pred, oracle), "oo_": (oracle, label)}.items():
        k = confusion(a, b)  # the project's one metric: Jaccard = inter / union
        c[f"{key}union"], c[f"{key}inter"] = k.tp + k.fp + k.fn, k.tp
    wrong, agree = pred != label, pred == oracle
    c["margin_fp"] = np.count_nonzero(wrong & agree & pred)
    c["margin_fn"] = np.count_nonzero(wrong & agree & ~pred)
    band = {b: (alpha >= lo) & (alpha < hi) for b, (lo, hi) in OPACITY_BANDS.items()}
    fp, fn = wrong & ~agree & pred, wrong & ~agree & ~pred
    if oracle.any():
        from scipy.ndimage import distance_transform_edt

        near = distance_transform_edt(~oracle) <= NEAR_PX
    else:
        near = np.zeros_like(oracle)
    c["model_fp_away"] = np.count_nonzero(fp & band["clear"] & ~near)
    c["model_fp_outline"] = np.count_nonzero(fp & band["clear"] & near)
    for b in ("thin", "dense"):
        c[f"model_fp_{b}"] = np.count_nonzero(fp & band[b])
    for b in OPACITY_BANDS:
        c[f"model_fn_{b}"] = np.count_nonzero(fn & band[b])
    return {k: int(v) for k, v in c.items()}
