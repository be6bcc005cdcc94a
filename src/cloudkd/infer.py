"""The one prediction rule of a segmentation model: logits (optionally flip-averaged) -> binary cloud mask,
nodata pixels (0 in every band) clear.

Used by ``cloudkd predict``, the demo, export checks and ``submission/main.py``. It imports only numpy and torch
and parses as Python 3.9, so it travels unchanged inside the submission zip (``cloudkd pack`` copies it byte for
byte, and a test checks the copy).
"""

import math

import numpy as np
import torch


def predict_logits(model, x, tta=False):
    """Cloud logits (N, 1, H, W) of a normalised batch (N, 4, H, W).

    ``tta`` averages the logits of the batch as is, flipped left-right and flipped up-down (each flipped back).
    """
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


def nodata_mask(refl):
    """Boolean (..., H, W): pixels with no data (0) in every band of a (..., 4, H, W) chip or batch."""
    return (np.asarray(refl) == 0).all(axis=-3)


def masks_from_logits(logits, threshold=0.5, nodata=None):
    """uint8 masks (N, H, W) with 1 = cloud where the cloud probability exceeds ``threshold``; pixels marked in
    ``nodata`` (boolean (N, H, W), see :func:`nodata_mask`) are clear, as in ``submission/main.py``."""
    masks = (logits[:, 0] > logit_threshold(threshold)).cpu().numpy().astype(np.uint8)
    if nodata is not None:
        masks[np.asarray(nodata)] = 0
    return masks
