"""Label noise (``SynthConfig.label_noise``): wrong train labels of the kinds real annotators make, written over a
generated dataset's clean ones, for scoring label audits."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np

from ..chips import read_chip_dn, read_label, write_mask
from .catalogue import LOCATIONS_BY_NAME
from .georef import geotiff_tags

if TYPE_CHECKING:
    from .sentinel2 import ChipPlan, SynthConfig

#: the kinds of label noise, in the order they take turns
NOISE_KINDS = ("swap", "shift", "empty", "full", "nodata")
#: a swap takes the label of another chip of the same location that overlaps the chip's own by less than this (IoU)
SWAP_MAX_IOU = 0.5
#: "empty" goes on chips at least this cloudy, "full" on chips at most this cloudy (true cloud fraction)
EMPTY_MIN_CLOUD, FULL_MAX_CLOUD = 0.3, 0.05
#: a "shift" moves the label by this share of the chip side, in a random direction
SHIFT_RANGE = (0.08, 0.15)
#: the noise's own random stream (seeded with (seed, this)), so every other stream is untouched
NOISE_STREAM = int.from_bytes(b"label_noise", "big")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def shift_label(label: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``label`` moved by (dy, dx) pixels (down, right); the pixels it leaves are 0."""
    h, w = label.shape
    out = np.zeros_like(label)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        label[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def apply_label_noise(root: os.PathLike | str, cfg: SynthConfig, plans: List[ChipPlan], frac: Dict[str, float],
                      nodata: Dict[str, int]) -> Dict[str, Tuple[str, str]]:
    """Replace the written labels of ``round(cfg.label_noise * n_train)`` train chips by wrong ones; returns
    ``{chip_id: (kind, source chip id or "")}``. Features, test labels and every other chip stay as written.

    The chips are drawn from the noise's own stream (:data:`NOISE_STREAM`); the kinds then take turns in the order
    of :data:`NOISE_KINDS`, each turn giving the next chosen chip that suits the kind (a kind no chosen chip suits
    gives its turn to the next), so every kind appears when the count and the chips allow:

    * ``swap``: the clean label of another chip of the same location (another acquisition when there is one) whose
      label overlaps the chip's by IoU < :data:`SWAP_MAX_IOU`; ``source`` names it.
    * ``shift``: the label moved by 8-15 % of the chip side in a random direction, the vacated pixels 0; chips of
      one location all move by the same offset (a misregistered scene moves all its labels).
    * ``empty``: all clear, on a chip whose true cloud fraction is >= 0.3; ``full``: all cloud, on one <= 0.05.
    * ``nodata``: the nodata pixels (0 in every band) labelled cloud, only on chips that have some.

    Every noisy label differs from the clean one (checked). ``frac`` and ``nodata`` are the chips' true cloud
    fractions and nodata pixel counts (from :func:`cloudkd.data.synth.sentinel2._write_chip`).
    """
    train = [p for p in plans if p.split == "train"]
    n = int(round(cfg.label_noise * len(train)))
    if n == 0:
        return {}
    root = Path(root)
    rng = np.random.default_rng([cfg.seed, NOISE_STREAM])
    chosen = [train[int(i)] for i in rng.choice(len(train), size=n, replace=False)]
    label_path = lambda cid: root / "train_labels" / f"{cid}.tif"  # noqa: E731

    # swap partners of every chosen chip, reading each label of those locations once
    by_loc = defaultdict(list)
    for p in train:
        by_loc[p.location].append(p)
    partners: Dict[str, List[str]] = {}
    for loc in sorted({p.location for p in chosen}):
        mine = {p.chip_id: read_label(label_path(p.chip_id)).astype(bool) for p in chosen if p.location == loc}
        fits = {cid: ([], []) for cid in mine}  # (other acquisition, same acquisition)
        date = {p.chip_id: p.datetime for p in by_loc[loc]}
        for q in by_loc[loc]:
            other = mine.get(q.chip_id)
            if other is None:
                other = read_label(label_path(q.chip_id)).astype(bool)
            for cid, lab in mine.items():
                if cid != q.chip_id and _iou(lab, other) < SWAP_MAX_IOU:
                    fits[cid][date[cid] == q.datetime].append(q.chip_id)
        partners.update({cid: a or b for cid, (a, b) in fits.items()})

    suits = {"swap": lambda p: bool(partners[p.chip_id]),
             "shift": lambda p: frac[p.chip_id] > 0,
             "empty": lambda p: frac[p.chip_id] >= EMPTY_MIN_CLOUD,
             "full": lambda p: frac[p.chip_id] <= FULL_MAX_CLOUD,
             "nodata": lambda p: nodata[p.chip_id] > 0}
    kinds: Dict[str, str] = {}
    pending, turn = list(chosen), 0
    while pending:
        for step in range(len(NOISE_KINDS)):
            kind = NOISE_KINDS[(turn + step) % len(NOISE_KINDS)]
            pick = next((p for p in pending if suits[kind](p)), None)
            if pick is not None:
                break
        else:  # cannot happen: a chip with cloud can be shifted, one without can be made full
            raise AssertionError(f"no kind of label noise suits chips {[p.chip_id for p in pending]}")
        kinds[pick.chip_id] = kind
        pending.remove(pick)
        turn = (turn + step + 1) % len(NOISE_KINDS)

    offsets: Dict[str, Tuple[int, int]] = {}  # one shift per location
    out: Dict[str, Tuple[str, str]] = {}
    for p in chosen:
        kind, source = kinds[p.chip_id], ""
        clean = read_label(label_path(p.chip_id))
        if kind == "swap":
            source = str(rng.choice(partners[p.chip_id]))
            noisy = read_label(label_path(source))
        elif kind == "shift":
            if p.location not in offsets:
                mag = rng.uniform(*SHIFT_RANGE) * cfg.size
                ang = rng.uniform(0, 2 * math.pi)
                offsets[p.location] = (int(round(mag * math.sin(ang))), int(round(mag * math.cos(ang))))
            noisy = shift_label(clean, *offsets[p.location])
        elif kind == "empty":
            noisy = np.zeros_like(clean)
        elif kind == "full":
            noisy = np.ones_like(clean)
        else:  # nodata
            dn = read_chip_dn(root / "train_features" / p.chip_id)
            noisy = clean | (dn == 0).all(axis=0).astype(np.uint8)
        if np.array_equal(noisy, clean):
            raise AssertionError(f"label noise {kind!r} left chip {p.chip_id}'s label unchanged")
        tags = geotiff_tags(LOCATIONS_BY_NAME[p.location].epsg, p.easting, p.northing)
        write_mask(label_path(p.chip_id), noisy, tags)
        out[p.chip_id] = (kind, source)
    return out
