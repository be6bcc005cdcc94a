"""The leaderboard metric against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from cloudkd.common.metrics import Confusion, EmptyUnionError, confusion


def global_jaccard(pairs) -> float:
    """The leaderboard metric as every scorer computes it: confusion counts summed over the chips."""
    total = Confusion()
    for pred, target in pairs:
        total += confusion(pred, target)
    return total.jaccard()


def test_confusion_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]], np.uint8)
    true = np.array([[1, 0, 0], [1, 1, 0]], np.uint8)
    c = confusion(pred, true)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    assert c.jaccard() == pytest.approx(2 / 4)
    assert c.precision == pytest.approx(2 / 3) and c.recall == pytest.approx(2 / 3)
    assert c.specificity == pytest.approx(2 / 3) and c.accuracy == pytest.approx(4 / 6)


def test_global_is_not_mean_of_chip_ious():
    # chip A: small cloud, half found (IoU 0.5); chip B: big cloud, all found (IoU 1.0)
    a_true = np.zeros((10, 10), np.uint8); a_true[0, :2] = 1
    a_pred = np.zeros((10, 10), np.uint8); a_pred[0, 0] = 1
    b_true = np.ones((10, 10), np.uint8)
    b_pred = np.ones((10, 10), np.uint8)
    g = global_jaccard([(a_pred, a_true), (b_pred, b_true)])
    assert g == pytest.approx((1 + 100) / (2 + 100))  # sum of intersections / sum of unions
    assert g != pytest.approx((0.5 + 1.0) / 2)


def test_chip_with_empty_union_counts_nothing_but_is_fine_globally():
    empty = np.zeros((4, 4), np.uint8)
    full = np.ones((4, 4), np.uint8)
    assert global_jaccard([(empty, empty), (full, full)]) == 1.0
    assert math.isnan(confusion(empty, empty).iou())
    assert confusion(empty, empty).iou(empty=1.0) == 1.0


def test_empty_union_raises_like_the_official_metric():
    z = np.zeros((8, 8), np.uint8)
    with pytest.raises(EmptyUnionError):
        global_jaccard([(z, z), (z, z)])
    with pytest.raises(ZeroDivisionError):
        Confusion().jaccard()


def test_all_wrong_is_zero_and_shapes_must_match():
    a = np.eye(4, dtype=np.uint8)
    assert global_jaccard([(a, 1 - a)]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((4, 4)), np.zeros((4, 5)))


def test_torch_and_numpy_counts_agree_with_brute_force():
    rng = np.random.default_rng(0)
    preds = [(rng.random((3, 32, 32)) > 0.5) for _ in range(5)]
    trues = [(rng.random((3, 32, 32)) > 0.6) for _ in range(5)]
    inter = sum(int(np.logical_and(p, t).sum()) for p, t in zip(preds, trues))
    union = sum(int(np.logical_or(p, t).sum()) for p, t in zip(preds, trues))
    expect = inter / union
    assert global_jaccard(zip(preds, trues)) == pytest.approx(expect)
    m = Confusion()
    for p, t in zip(preds, trues):
        m += confusion(torch.from_numpy(p), torch.from_numpy(t.astype(np.float32)))
    assert m.jaccard() == pytest.approx(expect)
    assert m.n_pixels == 5 * 3 * 32 * 32
    with pytest.raises(EmptyUnionError):
        Confusion(0, 0, 0, 100).jaccard()


def test_iou_of_two_masks_with_empty_default():
    """export's int8-vs-fp32 check: the IoU of two mask sets, 1.0 when both are empty."""
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert confusion(a, b).iou(empty=1.0) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert confusion(a, b).iou(empty=1.0) == 1 / 3
