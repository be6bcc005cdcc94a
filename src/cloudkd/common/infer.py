"""The one prediction rule of a segmentation model: logits (optionally flip-averaged) -> cloud where the
probability exceeds the threshold -> nodata pixels (0 in every band) clear.

Used by ``cloudkd student predict``, ``teacher predict``, the demo, bench, export checks, whole scenes and
``submission/main.py``. It imports only numpy (and torch when a model runs, so that a command line reading
``DEFAULT_THRESHOLD`` does not load torch) and parses as Python 3.9, so it travels unchanged inside the submission zip (``cloudkd pack`` copies it byte for
byte, and a test checks the copy).
"""

import math

import numpy as np

#: the cloud probability above which a pixel is cloud, unless a command is given another
DEFAULT_THRESHOLD = 0.5


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


def masks_from_logits(logits, threshold=DEFAULT_THRESHOLD, nodata=None):
    """uint8 masks (N, H, W) with 1 = cloud where the cloud probability exceeds ``threshold``, from logits
    (N, 1, H, W) (torch or numpy); pixels marked in ``nodata`` (boolean (N, H, W), see :func:`nodata_mask`) are
    clear."""
    above = logits[:, 0] > logit_threshold(threshold)
    above = above.cpu().numpy() if hasattr(above, "cpu") else np.asarray(above)
    return clear_nodata(above.astype(np.uint8), nodata)


def probabilities_from_logits(logits):
    """Cloud probabilities (float32 numpy) of logits (torch or numpy): the sigmoid, written with tanh so that no
    logit overflows."""
    z = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    return 0.5 + 0.5 * np.tanh(0.5 * z.astype(np.float32))


def masks_from_probabilities(prob, threshold=DEFAULT_THRESHOLD, nodata=None):
    """The same rule for models that give probabilities (N, H, W) (nnU-Net's own inference path)."""
    logit_threshold(threshold)  # the same check of the threshold
    return clear_nodata((np.asarray(prob) > threshold).astype(np.uint8), nodata)


def predict_masks(model, x, nodata=None, threshold=DEFAULT_THRESHOLD, tta=False):
    """The rule end to end: uint8 masks (N, H, W) of a normalised batch ``x`` (N, 4, H, W), with the flip TTA
    option, the threshold and the nodata pixels (``nodata_mask`` of the reflectance) clear."""
    return masks_from_logits(predict_logits(model, x, tta), threshold, nodata)
