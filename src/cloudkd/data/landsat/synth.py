"""Generated Landsat-8 scenes in the exact 38-Cloud layout (``cloudkd landsat synth``).

The scenes are rendered with the Sentinel-2 generator's physics (:mod:`cloudkd.data.synth.sentinel2`) at finer
pixels, averaged down to 30 m, framed in a tilted WRS-2 footprint and cut into 384x384 patches by the 38-Cloud
reader's own cutter (:mod:`cloudkd.data.landsat.reader`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pandas as pd

from ..chips import write_band
from ..normalise import SCALE
from ..generation import SynthResult, claim_root, finish_root
from ..synth.catalogue import Location
from ..synth.sentinel2 import SynthConfig, render_chip, split_locations
from .reader import LANDSAT_BANDS, PATCH, SCENE_GTS, cut_scene, dn_to_landsat_dn, write_gt

@dataclass(frozen=True)
class Landsat38Config:
    """What ``cloudkd landsat synth`` generates: whole Landsat-like scenes at 30 m, cut like 38-Cloud.

    Each scene is rendered with the same physics as the Sentinel-2 chips at ``oversample`` x finer pixels and
    averaged down to 30 m, so textures and cloud edges have Landsat's scale. Scenes sit in a tilted footprint
    (the Landsat WRS-2 frame, black outside) and some are partial (the end of an acquisition), so whole patches
    are empty, as in the real dataset. Real 38-Cloud scenes are ~7,000-8,000 px a side (about 20 x 21 patches);
    these are ``min_grid`` .. ``max_grid`` patches a side, each side a few dozen pixels short of whole patches.
    """

    n_train_scenes: int = 6
    n_test_scenes: int = 3
    min_grid: int = 2
    max_grid: int = 3
    seed: int = 0
    difficulty: float = 0.7
    label_threshold: float = 0.3
    oversample: int = 2
    p_partial: float = 0.4

    def __post_init__(self):
        if not 1 <= self.min_grid <= self.max_grid:
            raise ValueError(f"need 1 <= min_grid <= max_grid, got {self.min_grid}, {self.max_grid}")
        if self.n_train_scenes < 0 or self.n_test_scenes < 0 or self.n_train_scenes + self.n_test_scenes == 0:
            raise ValueError("need at least one scene")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")


def _footprint(rng: np.random.Generator, h: int, w: int, partial: bool) -> np.ndarray:
    """The valid-data mask of a scene: a rotated rectangle inside the raster, cut short when ``partial``."""
    theta = math.radians(rng.uniform(9.0, 14.0))
    c, s = math.cos(theta), math.sin(theta)
    den = c * c - s * s
    a = (w / 2 * c - h / 2 * s) / den  # half sizes whose rotated rectangle touches the raster's edges
    b = (h / 2 * c - w / 2 * s) / den
    shrink = rng.uniform(0.8, 0.95)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xx - w / 2, yy - h / 2
    u, v = x * c + y * s, -x * s + y * c
    mask = (np.abs(u) <= a * shrink) & (np.abs(v) <= b * shrink)
    if partial:  # the acquisition starts or ends part-way along the frame
        cut = b * shrink * rng.uniform(-0.4, 0.2)
        mask &= (v <= cut) if rng.random() < 0.5 else (v >= -cut)
    return mask


def render_landsat_scene(seed: int, location: Location, cfg: Landsat38Config, shape: Tuple[int, int],
                         partial: bool) -> Dict[str, np.ndarray]:
    """One scene: ``dn`` uint16 (4, H, W) in reflectance x 10000 (0 outside the footprint) and ``label`` (H, W)."""
    h, w = shape
    k = cfg.oversample
    size = max(h, w)
    sc = SynthConfig(n_train=1, n_test=0, size=size * k, seed=cfg.seed, difficulty=cfg.difficulty,
                     label_style="opacity", label_threshold=cfg.label_threshold, p_nodata=0.0,
                     ground_gain_min=1.0)  # TOA scenes: the L2A ground measurement is not theirs
    out = render_chip(seed, location, sc)
    refl = out["dn"].astype(np.float32).reshape(4, size, k, size, k).mean(axis=(2, 4))[:, :h, :w] / SCALE
    label = out["label"].astype(np.float32).reshape(size, k, size, k).mean(axis=(1, 3))[:h, :w] >= 0.5
    rng = np.random.default_rng([seed, 38])
    valid = _footprint(rng, h, w, partial)
    dn = np.clip(np.rint(refl * SCALE), 1, 65535).astype(np.uint16)
    dn[:, ~valid] = 0
    return {"dn": dn, "label": (label & valid).astype(np.uint8)}


def synthesize_38cloud(root: os.PathLike | str, cfg: Landsat38Config = Landsat38Config(), overwrite: bool = False,
                       progress: bool = True) -> SynthResult:
    """Write ``root/38-Cloud_training`` and ``root/38-Cloud_test`` in the exact 38-Cloud layout.

    Training: ``train_{red,green,blue,nir,gt}`` patches and ``training_patches_38-cloud_nonempty.csv``; test:
    ``test_{red,green,blue,nir}`` patches and ``Entire_scene_gts/edited_corrected_gts_{scene}.TIF``. Digital
    numbers are Landsat-8 L1 values (DN = (reflectance + 0.1) / 2e-5), truth is 0/255. Train and test scenes come
    from disjoint locations. Reused when ``synth38.json`` records the same config and no
    ``generation.unfinished`` marker of an interrupted run is left (that folder is generated again).
    """
    root = Path(root)
    stamp = root / "synth38.json"
    want = asdict(cfg)
    if claim_root(root, stamp, want, overwrite):
        return SynthResult(root, cfg.n_train_scenes, cfg.n_test_scenes, 0.0, True)
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 38])
    train_locs, test_locs = split_locations(SynthConfig(seed=cfg.seed))
    plans = []
    for i in range(cfg.n_train_scenes + cfg.n_test_scenes):
        split = "train" if i < cfg.n_train_scenes else "test"
        locs = train_locs if split == "train" else test_locs
        day = np.datetime64("2014-01-01") + np.timedelta64(int(rng.integers(0, 6 * 365)), "D")
        proc = day + np.timedelta64(int(rng.integers(200, 600)), "D")
        scene = (f"LC08_L1TP_{int(rng.integers(1, 234)):03d}{int(rng.integers(1, 249)):03d}_"
                 f"{str(day).replace('-', '')}_{str(proc).replace('-', '')}_01_T1")
        shape = tuple(int(PATCH * rng.integers(cfg.min_grid, cfg.max_grid + 1) - rng.integers(0, 64))
                      for _ in range(2))
        plans.append((split, scene, locs[int(rng.integers(len(locs)))], shape, int(rng.integers(2 ** 31 - 1)),
                      bool(rng.random() < cfg.p_partial)))
    dirs = {"train": root / "38-Cloud_training", "test": root / "38-Cloud_test"}
    nonempty, scenes, frac = [], {"train": [], "test": []}, {}
    it = plans
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(plans, desc="synth 38-Cloud", unit="scene")
    for split, scene, loc, shape, seed, partial in it:
        out = render_landsat_scene(seed, loc, cfg, shape, partial)
        d = dirs[split]
        dn = cut_scene(dn_to_landsat_dn(out["dn"]), scene)
        gt = cut_scene(out["label"], scene)
        for p, arr in dn.items():
            for b, band in enumerate(LANDSAT_BANDS):
                write_band(d / f"{split}_{band}" / p.file(band), np.ascontiguousarray(arr[b]))
            if split == "train":
                write_gt(d / "train_gt" / p.file("gt"), gt[p])
                if arr.any():
                    nonempty.append(p.name)
        if split == "test":
            write_gt(d / SCENE_GTS / f"edited_corrected_gts_{scene}.TIF", out["label"])
        scenes[split].append(scene)
        frac[scene] = float(out["label"].mean())
    if cfg.n_train_scenes:
        pd.DataFrame({"name": sorted(nonempty)}).to_csv(dirs["train"] / "training_patches_38-cloud_nonempty.csv",
                                                        index=False)
        pd.DataFrame({"Productid": scenes["train"]}).to_csv(dirs["train"] / "training_sceneids_38-Cloud.csv",
                                                            index=False)
    if cfg.n_test_scenes:
        pd.DataFrame({"Productid": scenes["test"]}).to_csv(dirs["test"] / "test_sceneids_38-Cloud.csv", index=False)
    seconds = time.perf_counter() - t0
    finish_root(root, stamp, {"config": want, "seconds": round(seconds, 2),
                              "scenes": {s: [p[1] for p in plans if p[0] == s] for s in ("train", "test")},
                              "generator": "cloudkd.data.landsat.synth.synthesize_38cloud"})
    return SynthResult(root, cfg.n_train_scenes, cfg.n_test_scenes, seconds, False, frac)
