"""The one prediction rule of a segmentation model: logits (optionally flip-averaged) -> cloud where the
probability exceeds the threshold -> that mask grown by ``dilate`` pixels (:func:`dilate_masks`, a margin a run
learns on its validation chips with ``cloudkd student fit-rule``; 0: none) -> nodata pixels (0 in every band)
clear.

Used by ``cloudkd student predict``, ``teacher predict``, the demo, bench, export checks, whole scenes and
``submission/main.py``. It imports only numpy (and torch when a model runs, so that a command line reading
``DEFAULT_THRESHOLD`` does not load torch) and parses as Python 3.9, so it travels unchanged inside the submission zip (``cloudkd pack`` copies it byte for
byte, and a test checks the copy).
"""

import math

import numpy as np

#: the cloud probability above which a pixel is cloud, unless a command is given another
DEFAULT_THRESHOLD = 0.5
#: the dilation (pixels) of the rule of a model that recorded none
DEFAULT_DILATE = 0
#: the thresholds a rule's threshold is fitted from on validation chips (teacher fit-threshold, student fit-rule)
FIT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def best_rule(jaccard, base=DEFAULT_THRESHOLD):
    """The (threshold, dilation) key of ``jaccard`` ({(threshold, dilation): validation Jaccard}) a fitted rule
    takes: the highest Jaccard; of equal ones, the smallest dilation, then the threshold nearest ``base``, then the
    lower threshold."""
    return min(jaccard, key=lambda k: (-jaccard[k], k[1], abs(k[0] - base), k[0]))


def predict_logits(model, x, tta=False):
    """Cloud logits (N, 1, H, W) of a normalised batch (N, 4, H, W).

    ``tta`` averages the logits of the batch as is, flipped left-right and flipped up-down (each flipped back).
    """
    import torch

    with torch.no_grad():
        if not tta:
            return model(x)
        out = model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2)
        return out / 3


def logit_threshold(threshold):
    """The logit equal to cloud probability ``threshold`` (0 < threshold < 1)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be in (0, 1), got %r" % (threshold,))
    return math.log(threshold / (1.0 - threshold))


def nodata_mask(refl, value=0):
    """Boolean (..., H, W): pixels with no data (0) in every band of a (..., 4, H, W) chip or batch. ``value``: the
    no-data value when the array holds a product's digital numbers (Sentinel-2's NODATA is 0 there too, while
    its reflectance after a radiometric offset is not)."""
    return (np.asarray(refl) == value).all(axis=-3)


def clear_nodata(masks, nodata):
    """``masks`` with the ``nodata`` pixels (see nodata_mask; None: none) set clear, in place."""
    if nodata is not None:
        masks[np.asarray(nodata)] = 0
    return masks


def check_dilate(px):
    """``px`` as an int when it is a whole number of pixels >= 0, else ValueError."""
    if isinstance(px, bool) or not isinstance(px, (int, np.integer)) or px < 0:
        raise ValueError("dilate must be a whole number of pixels >= 0, got %r" % (px,))
    return int(px)


def dilate_masks(masks, px):
    """Boolean masks (..., H, W) grown by ``px`` pixels: ``px`` times the 4-neighbour (cross) dilation, so a
    pixel becomes cloud when a cloud pixel lies within city-block distance ``px`` (a diamond of radius ``px``) in
    the same image; nothing lies beyond the image's edges. ``px`` 0: the masks as booleans."""
    m = np.asarray(masks).astype(bool)
    for _ in range(check_dilate(px)):
        grown = m.copy()
        grown[..., 1:, :] |= m[..., :-1, :]
        grown[..., :-1, :] |= m[..., 1:, :]
        grown[..., :, 1:] |= m[..., :, :-1]
        grown[..., :, :-1] |= m[..., :, 1:]
        m = grown
    return m


def masks_from_above(above, nodata=None, dilate=DEFAULT_DILATE):
    """The rule after its threshold: uint8 masks (..., H, W) of the above-threshold pixels ``above``, grown by
    ``dilate`` pixels (:func:`dilate_masks`), then the ``nodata`` pixels clear."""
    return clear_nodata(dilate_masks(above, dilate).astype(np.uint8), nodata)


def masks_from_logits(logits, threshold=DEFAULT_THRESHOLD, nodata=None, dilate=DEFAULT_DILATE):
    """uint8 masks (N, H, W) with 1 = cloud where the cloud probability exceeds ``threshold``, from logits
    (N, 1, H, W) (torch or numpy), grown by ``dilate`` pixels (:func:`dilate_masks`); pixels marked in ``nodata``
    (boolean (N, H, W), see :func:`nodata_mask`) are clear."""
    above = logits[:, 0] > logit_threshold(threshold)
    above = above.cpu().numpy() if hasattr(above, "cpu") else np.asarray(above)
    return masks_from_above(above, nodata, dilate)


def probabilities_from_logits(logits):
    """Cloud probabilities (float32 numpy) of logits (torch or numpy): the sigmoid, written with tanh so that no
    logit overflows."""
    z = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    return 0.5 + 0.5 * np.tanh(0.5 * z.astype(np.float32))


def masks_from_probabilities(prob, threshold=DEFAULT_THRESHOLD, nodata=None, dilate=DEFAULT_DILATE):
    """The same rule for models that give probabilities (N, H, W) (nnU-Net's own inference path)."""
    logit_threshold(threshold)  # the same check of the threshold
    return masks_from_above(np.asarray(prob) > threshold, nodata, dilate)


def predict_masks(model, x, nodata=None, threshold=DEFAULT_THRESHOLD, tta=False, dilate=DEFAULT_DILATE):
    """The rule end to end: uint8 masks (N, H, W) of a normalised batch ``x`` (N, 4, H, W), with the flip TTA
    option, the threshold, the dilation and the nodata pixels (``nodata_mask`` of the reflectance) clear."""
    return masks_from_logits(predict_logits(model, x, tta), threshold, nodata, dilate)
