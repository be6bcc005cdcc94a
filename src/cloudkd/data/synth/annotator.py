"""How the generator labels its clouds: two rules, chosen with ``SynthConfig.label_style``.

* ``"annotator"`` (the default): a model of the On Cloud N annotators, measured on the official labels of real
  chips (``benchmarks/annotation_style.py``, figures in ``data/README.md``). They draw generous, smooth
  outlines around the *whole* cloud: every visibly bright cloud pixel is inside the label, the outline sits a
  median 15 px (p25 8, p75 30) outside the visible cloud edge, its fine fractal detail is gone, and small
  specks and holes are not drawn. The rule, on the opacity field ``alpha`` of the generator:

  1. the cloud the annotator sees (both smoothed by 1.5 px): dense cloud, ``alpha >= level``, whatever it lies
     over (a bright top or a deck in shadow), and semi-transparent cloud where it clearly brightens the scene,
     by at least ``contrast`` in visible reflectance (a veil over dark ground is drawn; the same veil over
     snow or sand, where it does not show, is not, nor is a faint veil through which the ground stays plain);
  2. specks smaller than ``min_blob`` px dropped;
  3. a margin: every pixel within ``m(x)`` px of that cloud, where ``m`` is a smooth random field whose chip
     median is drawn from a log-normal (median ``margin``, log-spread ``margin_spread``) and which varies along
     the outline by a factor ``exp(margin_wobble * noise)``;
  4. a smooth outline: the mask blurred with a Gaussian of ``smooth`` px and cut at 0.5;
  5. holes smaller than ``min_hole`` px filled, blobs smaller than ``min_blob`` px dropped.

* ``"opacity"`` (the rule before): ``gaussian(alpha, 1.5 px) >= label_threshold``; it labels the dense
  opacity only, so the outline follows, and often cuts into, the visible cloud.

The annotator draws its random numbers from its own stream, so the two rules label the very same image.
Both functions work on the generator's padded canvas (the annotator sees beyond the chip's edge, as the real
annotators labelled whole scenes before they were cut into chips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

LABEL_STYLES = ("annotator", "opacity")


@dataclass(frozen=True)
class AnnotatorStyle:
    """The annotator model's parameters. Defaults come from the measured statistics of real labels (see
    ``data/README.md``: the margin median and spread from the distances of real outlines to the visible cloud,
    ``smooth`` from their roughness, ``min_hole`` / ``min_blob`` from the smallest real holes and blobs, and the
    ``contrast`` from the real clear ground: between the clouds of adwu it is vegetation whose visible bands are
    about 0.06 brighter than clear vegetation (haze or a veil), labelled clear, so a veil is drawn only from a
    clearly larger brightening, 0.1); they were not tuned on any score."""

    level: float = 0.5
    contrast: float = 0.1
    margin: float = 12.0
    margin_spread: float = 0.5
    margin_wobble: float = 0.4
    smooth: float = 2.0
    min_hole: int = 100
    min_blob: int = 30

    def __post_init__(self):
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"annotator level must be in (0, 1), got {self.level}")
        if self.contrast <= 0:
            raise ValueError(f"annotator contrast must be > 0, got {self.contrast}")
        if self.margin < 0 or self.margin_spread < 0 or self.margin_wobble < 0 or self.smooth < 0:
            raise ValueError("annotator margin, spreads and smoothing must be >= 0")
        if self.min_hole < 0 or self.min_blob < 0:
            raise ValueError("annotator min_hole and min_blob must be >= 0")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(img.astype(np.float32), sigma, mode="nearest") if sigma > 0 else img


def opacity_label(alpha: np.ndarray, threshold: float = 0.3, sigma: float = 1.5) -> np.ndarray:
    """The opacity rule: boolean mask where the opacity, smoothed by ``sigma`` px, reaches ``threshold``."""
    return np.clip(_blur(alpha, sigma), 0, 1) >= threshold


def drop_small(mask: np.ndarray, min_blob: int) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_blob`` pixels."""
    from scipy import ndimage

    if min_blob <= 1 or not mask.any():
        return mask
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_blob
    keep[0] = False
    return keep[lab]


def fill_small_holes(mask: np.ndarray, min_hole: int) -> np.ndarray:
    """``mask`` with its holes (4-connected background components not touching the border) smaller than
    ``min_hole`` pixels filled."""
    from scipy import ndimage

    if min_hole <= 1 or mask.all():
        return mask
    lab, n = ndimage.label(~mask)
    sizes = np.bincount(lab.ravel())
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    fill = sizes < min_hole
    fill[0] = False
    fill[border] = False
    return mask | fill[lab]


def margin_field(rng: np.random.Generator, shape, style: AnnotatorStyle) -> np.ndarray:
    """The annotator's margin (px) at every pixel: a chip-wide log-normal draw times a smooth wobble."""
    from scipy import ndimage

    m = style.margin * float(np.exp(style.margin_spread * rng.standard_normal()))
    coarse = rng.standard_normal((shape[0] // 64 + 3, shape[1] // 64 + 3)).astype(np.float32)
    if style.margin_wobble <= 0:
        return np.full(shape, m, np.float32)
    # a smooth field varying over ~64 px: linear interpolation of coarse white noise, cropped to the shape
    noise = ndimage.zoom(coarse, 64, order=1, mode="nearest")[: shape[0], : shape[1]]
    noise /= noise.std() + 1e-12
    return (m * np.exp(style.margin_wobble * noise)).astype(np.float32)


def seen_cloud(alpha: np.ndarray, style: AnnotatorStyle, brightening: Optional[np.ndarray] = None) -> np.ndarray:
    """What the annotator sees as cloud: dense cloud (smoothed ``alpha >= level``) and, when ``brightening``
    (the visible reflectance the cloud adds to the scene) is given, cloud that brightens it by ``contrast``."""
    seen = opacity_label(alpha, style.level)
    if brightening is not None:
        seen |= _blur(brightening, 1.5) >= style.contrast
    return seen


def annotator_label(alpha: np.ndarray, rng: np.random.Generator, style: AnnotatorStyle = AnnotatorStyle(),
                    brightening: Optional[np.ndarray] = None):
    """The annotator rule (see the module docstring): boolean mask of the same shape as ``alpha``."""
    from scipy import ndimage

    seen = drop_small(seen_cloud(alpha, style, brightening), style.min_blob)
    margin = margin_field(rng, alpha.shape, style)
    if not seen.any():
        return seen
    near = ndimage.distance_transform_edt(~seen) <= margin
    if style.smooth > 0:
        near = (_blur(near, style.smooth) >= 0.5) | seen  # smoothing never uncovers the cloud it was drawn around
    return drop_small(fill_small_holes(near, style.min_hole), style.min_blob)
