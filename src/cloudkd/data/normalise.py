"""The one normalisation of model inputs, shared by the student, baselines, export and submission/main.py.

``normalise(refl)`` maps surface reflectance (what :func:`cloudkd.data.chips.read_chip` returns) to roughly
zero-mean, unit-variance inputs with *fixed* per-band constants, so that a chip is normalised the same way
whatever else is in the batch, on the ground or in orbit:

    x = (clip(refl, 0, REFL_MAX) - MEAN[band]) / STD[band]

Nodata pixels (reflectance 0) map to ``-MEAN/STD``. The constants are rounded statistics of the generated
benchmark's training split (see ``data/README.md``); they sit close to the five real chips' statistics.
This module needs only numpy (and accepts torch tensors too) and parses as Python 3.9: it travels unchanged inside
the submission zip, where ``submission/main.py`` reads chips with the same band order and scaling.
"""

import numpy as np

#: Band files of a chip, in the model's channel order.
BANDS = ("B02", "B03", "B04", "B08")
#: Digital numbers per unit of surface reflectance (On Cloud N / Sentinel-2 L2A: uint16 reflectance x 10000).
SCALE = 10000.0
#: Reflectance above this is clipped (bright cloud tops reach ~1.4 in L2A chips; DN up to 65535).
REFL_MAX = 1.6
#: Per-band (B02, B03, B04, B08) centre and scale in reflectance units.
MEAN = (0.30, 0.30, 0.30, 0.33)
STD = (0.30, 0.27, 0.25, 0.21)


def dn_to_reflectance(dn, offset=0.0, scale=SCALE):
    """Digital numbers (any numeric array) -> float32 reflectance ``(dn + offset) / scale``.

    ``scale`` is the digital numbers per unit reflectance (a Sentinel-2 product's quantification value, 10000);
    ``offset`` is added first: one number, or one per band of a ``(..., 4, H, W)`` array. Sentinel-2 products of
    processing baseline 04.00 and later (since 25 January 2022) carry ``BOA_ADD_OFFSET`` = -1000 (L1C:
    ``RADIO_ADD_OFFSET``); the On Cloud N chips (2018-2020) carry none, hence the default 0.
    """
    refl = np.asarray(dn).astype(np.float32)
    off = np.asarray(offset, np.float32)
    if off.ndim:  # one per band
        refl += off.reshape(off.shape + (1, 1))
    elif off != 0:
        refl += off
    return refl / np.float32(scale)


def normalise(refl):
    """Normalise a reflectance array ``(..., 4, H, W)`` (numpy or torch, float) band by band."""
    if hasattr(refl, "clamp"):  # torch tensor
        import torch

        mean = torch.tensor(MEAN, dtype=refl.dtype, device=refl.device).view(4, 1, 1)
        std = torch.tensor(STD, dtype=refl.dtype, device=refl.device).view(4, 1, 1)
        return (refl.clamp(0.0, REFL_MAX) - mean) / std
    refl = np.asarray(refl, dtype=np.float32)
    if refl.ndim < 3 or refl.shape[-3] != 4:
        raise ValueError(f"expected (..., 4, H, W) reflectance, got shape {refl.shape}")
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    std = np.asarray(STD, np.float32)[:, None, None]
    return (np.clip(refl, 0.0, REFL_MAX) - mean) / std
