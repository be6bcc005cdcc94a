"""The one implementation of the leaderboard metric, used by training, scoring and benchmarks.

On Cloud N is scored with a single *global* Jaccard index: the sum of intersections over the sum of unions of
all pixels of all chips (not a mean of per-chip IoUs). It raises when the union is empty, like the official
``metric.py``. Inputs are binary masks (1 = cloud) as numpy arrays or torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def ratio(num, den):
    """``num / den`` for counts: Python numbers or pandas Series, NaN where ``den`` is 0.

    Every rate of the project (Jaccard, precision, recall, specificity, accuracy, per chip, per location, per
    scene, in training) is one of the ratios of :class:`Confusion`, computed here.
    """
    if hasattr(den, "where"):  # pandas Series
        return (num / den.where(den > 0)).astype(float)
    return num / den if den else math.nan


def none_if_nan(x):
    """``x``, or None where it is a NaN float (JSON has no NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class EmptyUnionError(ZeroDivisionError):
    """The Jaccard index is undefined: neither the prediction nor the label has a single cloud pixel."""


def _count(x) -> int:
    if hasattr(x, "detach"):  # torch tensor
        return int(x.count_nonzero().item())
    import numpy as np

    return int(np.count_nonzero(x))


def _as_bool(x):
    if hasattr(x, "detach"):
        return x.bool()
    import numpy as np

    x = np.asarray(x)
    return x if x.dtype == bool else x.astype(bool)


@dataclass
class Confusion:
    """Pixel counts of a binary segmentation; sums over chips give the global metric."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __iadd__(self, other: "Confusion") -> "Confusion":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    @property
    def intersection(self) -> int:
        return self.tp

    @property
    def union(self) -> int:
        return self.tp + self.fp + self.fn

    @property
    def n_pixels(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def jaccard(self) -> float:
        """Intersection over union; raises :class:`EmptyUnionError` when the union is empty."""
        if self.union == 0:
            raise EmptyUnionError("Jaccard index undefined: the union of prediction and label is empty")
        return self.tp / self.union

    def iou(self, empty: float = math.nan) -> float:
        """Intersection over union, or ``empty`` when the union is empty (two empty masks agree: 1.0)."""
        return self.tp / self.union if self.union else empty

    @property
    def precision(self) -> float:
        return rates(self)["precision"]

    @property
    def recall(self) -> float:
        return rates(self)["recall"]

    @property
    def specificity(self) -> float:
        return rates(self)["specificity"]

    @property
    def accuracy(self) -> float:
        return rates(self)["accuracy"]


#: the rates of a confusion, in the order tables show them
RATES = ("jaccard", "precision", "recall", "specificity", "accuracy")


def rates(c) -> dict:
    """Jaccard, precision, recall, specificity and accuracy of anything with ``tp, fp, fn, tn`` (a
    :class:`Confusion`, or a DataFrame with those columns: one value per row); NaN where undefined."""
    tp, fp, fn, tn = c.tp, c.fp, c.fn, c.tn
    return {"jaccard": ratio(tp, tp + fp + fn), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "accuracy": ratio(tp + tn, tp + fp + fn + tn)}


def confusion(pred, target) -> Confusion:
    """Confusion counts of two binary masks of the same shape (any number of dimensions; >0 = cloud)."""
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    p, t = _as_bool(pred), _as_bool(target)
    tp = _count(p & t)
    ps, ts = _count(p), _count(t)
    n = 1
    for s in pred.shape:
        n *= int(s)
    fp, fn = ps - tp, ts - tp
    return Confusion(tp, fp, fn, n - tp - fp - fn)
