"""How a cloud label is drawn, measured: the statistics that compare real annotators with the generator's.

The same functions measure the official labels of real chips and the labels of generated chips, so the two can
be compared like for like (``benchmarks/annotation_style.py``, figures in ``data/README.md``). The reference is
the *visible cloud*: pixels whose visible brightness ``mean(B02, B03, B04)`` exceeds :data:`BRIGHT` (0.3, well
above clear ground: the brightest 1 % of the real clear pixels sit near 0.21), after a light smoothing
(``sigma`` 1 px) against sensor noise. For each chip:

* **margin**: for every pixel of the label's outline (away from the chip border), the signed distance to the
  visible-cloud edge, positive when the outline lies outside the visible cloud (a generous label), negative when
  it cuts into it;
* **label probability by distance**: the share of labelled pixels among the pixels *outside* the visible cloud,
  in bins of their distance to it (how far out annotators draw);
* **roughness**: outline length after a Gaussian smoothing of 1 px over outline length after one of 4 px, close
  to 1 for a smooth outline, large for a fractal one (the visible cloud edge itself is fractal); the 1-px
  smoothing keeps single-pixel holes of rasterised polygons out of it;
* **blobs and holes**: sizes of the labelled connected components, of the unlabelled holes inside them (not
  touching the chip border), and of the visible-cloud components left out of the label;
* **fractions**: label cloud fraction, visible-cloud fraction, the share of visible cloud inside the label and
  the share of the label that is visible cloud.

Everything needs only numpy and scipy.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

#: Visible brightness (reflectance) above which a pixel is visibly cloud.
BRIGHT = 0.3
#: Distance bins (pixels, left-closed) of the label-probability curve.
DIST_BINS = (0, 2, 5, 10, 20, 40, 80, 160, 100000)


def brightness(refl: np.ndarray) -> np.ndarray:
    """Visible brightness mean(B02, B03, B04) of a (4, H, W) reflectance chip."""
    return np.asarray(refl, np.float32)[:3].mean(axis=0)


def visible_cloud(refl: np.ndarray, level: float = BRIGHT, sigma: float = 1.0) -> np.ndarray:
    """Boolean (H, W): pixels whose smoothed visible brightness exceeds ``level`` (nodata excluded)."""
    from scipy import ndimage

    b = brightness(refl)
    if sigma > 0:
        b = ndimage.gaussian_filter(b, sigma)
    return (b > level) & (np.asarray(refl).max(axis=0) > 0)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (chip-border pixels are not outline pixels)."""
    m = np.asarray(mask, bool)
    pad = np.pad(m, 1, mode="edge")
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return m & ~inner


def outline_length(mask: np.ndarray) -> int:
    """Number of unit pixel edges between cloud and clear (4-neighbour transitions)."""
    m = np.asarray(mask, bool)
    return int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())


def roughness(mask: np.ndarray, fine: float = 1.0, coarse: float = 4.0) -> float:
    """Outline length of the mask smoothed with a Gaussian of ``fine`` px over that with ``coarse`` px (>= ~1)."""
    from scipy import ndimage

    m = np.asarray(mask, np.float32)
    lengths = [outline_length(ndimage.gaussian_filter(m, s) > 0.5) for s in (fine, coarse)]
    return lengths[0] / lengths[1] if lengths[1] else float("nan")


def signed_margin(label: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Signed distance (px) from the visible-cloud edge to each outline pixel of ``label`` away from the border:
    > 0 outside the visible cloud, < 0 inside it. Empty when the label has no inner outline or no cloud."""
    from scipy import ndimage

    label, cloud = np.asarray(label, bool), np.asarray(cloud, bool)
    edge = outline(label) | outline(~label)  # both sides of the outline, so the measure is symmetric
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = False
    if not edge.any() or not cloud.any() or cloud.all():
        return np.zeros(0, np.float32)
    outside = ndimage.distance_transform_edt(~cloud)  # distance to the nearest cloud pixel
    inside = ndimage.distance_transform_edt(cloud)  # distance to the nearest clear pixel
    d = np.where(cloud, -(inside - 0.5), outside - 0.5)
    return d[edge & label].astype(np.float32)


def label_by_distance(label: np.ndarray, cloud: np.ndarray, bins: Sequence[int] = DIST_BINS):
    """(labelled pixels, pixels) outside the visible cloud per distance bin (arrays of len(bins) - 1)."""
    from scipy import ndimage

    label, cloud = np.asarray(label, bool), np.asarray(cloud, bool)
    n = len(bins) - 1
    if not cloud.any():
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    d = ndimage.distance_transform_edt(~cloud)
    out = ~cloud
    idx = np.digitize(d[out], bins[1:-1])
    pos = np.bincount(idx, weights=label[out], minlength=n)[:n].astype(np.int64)
    tot = np.bincount(idx, minlength=n)[:n].astype(np.int64)
    return pos, tot


def components(mask: np.ndarray):
    """(sizes of the 8-connected components of ``mask``, sizes of its holes: 4-connected components of the
    background that do not touch the chip border)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    blobs = np.bincount(lab.ravel())[1:] if n else np.zeros(0, np.int64)
    bg, nb = ndimage.label(~m)
    holes = np.zeros(0, np.int64)
    if nb:
        sizes = np.bincount(bg.ravel())[1:]
        border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
        keep = np.ones(nb, bool)
        keep[border[border > 0] - 1] = False
        holes = sizes[keep]
    return blobs, holes


def left_out_cloud(label: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Sizes of the visible-cloud components that do not touch the label at all."""
    from scipy import ndimage

    lab, n = ndimage.label(np.asarray(cloud, bool), structure=np.ones((3, 3), bool))
    if not n:
        return np.zeros(0, np.int64)
    sizes = np.bincount(lab.ravel())[1:]
    touched = np.unique(lab[np.asarray(label, bool)])
    keep = np.ones(n, bool)
    keep[touched[touched > 0] - 1] = False
    return sizes[keep]


def chip_style(refl: np.ndarray, label: np.ndarray, not_cloud: Optional[np.ndarray] = None,
               level: float = BRIGHT) -> Dict[str, object]:
    """Every statistic of one chip (arrays for the distributions, floats for the fractions). ``not_cloud``
    (optional) marks bright pixels known not to be cloud (a generated chip's snow, sand or roofs), which the
    real chips measured here do not have."""
    label = np.asarray(label, bool)
    cloud = visible_cloud(refl, level)
    if not_cloud is not None:
        cloud &= ~np.asarray(not_cloud, bool)
    valid = np.asarray(refl).max(axis=0) > 0
    blobs, holes = components(label)
    pos, tot = label_by_distance(label, cloud)
    partial = 0 < label.mean() < 1
    return {
        "label_fraction": float(label[valid].mean()) if valid.any() else float("nan"),
        "cloud_fraction": float(cloud[valid].mean()) if valid.any() else float("nan"),
        "cloud_in_label": float(label[cloud].mean()) if cloud.any() else float("nan"),
        "label_is_cloud": float(cloud[label].mean()) if label.any() else float("nan"),
        "margin": signed_margin(label, cloud),
        "by_distance": (pos, tot),
        "roughness_label": roughness(label) if partial else float("nan"),
        "roughness_cloud": roughness(cloud) if 0 < cloud.mean() < 1 else float("nan"),
        "blobs": blobs if partial else np.zeros(0, np.int64),
        "holes": holes if partial else np.zeros(0, np.int64),
        "left_out": left_out_cloud(label, cloud),
    }


def summarise(styles: Sequence[Dict[str, object]]) -> Dict[str, float]:
    """Pooled figures over the chips whose label is partial (neither empty nor full, so it has an outline):
    margin percentiles, label probability by distance, roughness, sizes."""
    styles = [s for s in styles if 0 < s["label_fraction"] < 1]
    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else float("nan")

    margin = np.concatenate([s["margin"] for s in styles]) if styles else np.zeros(0)
    pos = sum(s["by_distance"][0] for s in styles)
    tot = sum(s["by_distance"][1] for s in styles)
    blobs = np.concatenate([s["blobs"] for s in styles]) if styles else np.zeros(0)
    holes = np.concatenate([s["holes"] for s in styles]) if styles else np.zeros(0)
    left = np.concatenate([s["left_out"] for s in styles]) if styles else np.zeros(0)
    out = {
        "n_chips": len(styles),
        "margin_p10": pct(margin, 10), "margin_p25": pct(margin, 25), "margin_p50": pct(margin, 50),
        "margin_p75": pct(margin, 75), "margin_p90": pct(margin, 90),
        "roughness_label": float(np.nanmedian([s["roughness_label"] for s in styles])) if styles else float("nan"),
        "roughness_cloud": float(np.nanmedian([s["roughness_cloud"] for s in styles])) if styles else float("nan"),
        "smallest_blob": int(blobs.min()) if len(blobs) else None,
        "blob_p10": pct(blobs, 10),
        "smallest_hole": int(holes.min()) if len(holes) else None,
        "n_holes": int(len(holes)),
        "largest_left_out": int(left.max()) if len(left) else 0,
    }
    for lo, hi, p, t in zip(DIST_BINS[:-1], DIST_BINS[1:], pos, tot):
        name = f"p_label_{lo}_{hi}" if hi < 100000 else f"p_label_{lo}_up"
        out[name] = float(p / t) if t else float("nan")
    return out
