"""A realistic generated cloud benchmark, written in the exact On Cloud N layout.

Every chip is a physically motivated composite, built in surface reflectance and stored as uint16 x 10000:

1. **Ground.** A land-cover map (water, forest, cropland, grassland/savanna, bare soil/rock, desert, snow/ice,
   urban) drawn from fractal noise fields weighted by the chip's *location* (each location is a biome with its
   own cover mix, so location-grouped folds really test unseen places). Water prefers valleys and snow prefers
   ridges of a fractal elevation model. Each cover is a linear mixture of Sentinel-2 L2A-like endmember
   spectra (B02, B03, B04, B08) with its own texture: canopy, crop parcels, dunes, city blocks and streets,
   rivers; relief shading from the elevation model.
2. **Clouds.** An opacity field ``alpha`` in [0, 1] made of thick clouds (thresholded fractal noise, so edges are
   fractal and softness varies), thin semi-transparent clouds (streaky anisotropic noise with a capped
   opacity), and overcast chips. Cloud-top reflectance is bright, nearly white and slightly blue
   (B02 > B03 > B04 > B08 as in the real chips), with a bumpy internal texture; part of a deck may lie in the
   shadow of higher cloud (the same flat spectrum, much darker).
3. **Atmosphere and sensor.** Cloud shadows (the thick opacity shifted along the sun direction, softened and
   darkening the ground), additive haze stronger in blue than NIR, Gaussian sensor noise, quantisation, and
   rare nodata wedges (DN 0, labelled 0).

Composite: ``toa = ground * (1 - shadow) * (1 - alpha) + a_thick * R_thick + a_thin * (1 - a_thick) * R_thin + haze``.

**Labels** (:mod:`cloudkd.data.synth.annotator`). By default a model of the real annotators: generous, smooth
outlines around the whole cloud, thin and semi-transparent parts included, a margin outside the visible edge,
small holes filled and specks dropped, with parameters measured on real labels (``data/README.md``). The rule
before, ``label = gaussian(alpha, 1.5 px) >= label_threshold`` (0.3), stays selectable with
``label_style="opacity"``. Shadows, haze and bright ground are never cloud. ``label_noise`` makes a share of the
train labels wrong on purpose, the way real labels are
(:func:`~cloudkd.data.synth.label_noise.apply_label_noise`), to score label audits.

**Difficulty** in [0, 1] raises the share of thin clouds, the haze, the softness of cloud edges and the weight
of bright, white ground (snow, desert, bright roofs). The default (0.7) is calibrated so that the fitted
brightness/whiteness threshold scores a global Jaccard of about 0.6-0.75 on held-out locations (see
``data/README.md`` for the measured numbers and the comparison with the real chips).

This module holds the configuration, a chip's rendering and the writing of a dataset; the parts live beside it:
:mod:`.catalogue` (spectra, covers, locations), :mod:`.noise`, :mod:`.ground`, :mod:`.clouds`, :mod:`.georef`,
:mod:`.label_noise`, and :mod:`cloudkd.data.generation` (claiming and finishing a dataset's root).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from .annotator import LABEL_STYLES, AnnotatorStyle, annotator_label, opacity_label
from ...common.errors import DataError
from ...common.io import atomic_write
from ..chips import UNFINISHED, write_band, write_mask
from ..generation import SynthResult, claim_root, finish_root
from ..normalise import BANDS, SCALE
from .catalogue import HAZE_SHAPE, LOCATIONS, LOCATIONS_BY_NAME, Location
from .clouds import render_clouds
from .georef import geotiff_tags
from .ground import render_ground
from .label_noise import apply_label_noise
from .noise import _sigmoid, _Spectral


@dataclass(frozen=True)
class SynthConfig:
    """What ``cloudkd synth`` generates. Equal configs give byte-identical datasets."""

    n_train: int = 200
    n_test: int = 60
    size: int = 512
    seed: int = 0
    difficulty: float = 0.7
    #: how clouds are labelled (:mod:`cloudkd.data.synth.annotator`): "annotator" (generous smooth outlines, measured
    #: on real labels) or "opacity" (``gaussian(opacity, 1.5 px) >= label_threshold``, the rule before)
    label_style: str = "annotator"
    label_threshold: float = 0.3
    annotator: AnnotatorStyle = field(default_factory=AnnotatorStyle)
    #: chance that part of a cloudy chip's deck lies in the shadow of higher cloud (dim grey cloud)
    p_dim_deck: float = 0.25
    #: Locations used by the train / test split (train and test locations never overlap). 0 = all available.
    n_train_locations: int = 0
    n_test_locations: int = 0
    p_clear: float = 0.15
    p_overcast: float = 0.15
    p_nodata: float = 0.02
    #: share of the TRAIN chips (round(label_noise * n_train), chosen by their own random stream) given a wrong
    #: label of a real kind: "swap" (another chip's label, same location), "shift" (moved 8-15 % of the chip),
    #: "empty" (cloud fraction >= 0.3), "full" (<= 0.05), "nodata" (nodata wedge labelled cloud); see
    #: :func:`~.label_noise.apply_label_noise`. Test labels stay clean. 0 (the default) writes exactly what it wrote before.
    label_noise: float = 0.0
    #: chips written without labels to ``unlabelled_features/`` (``unlabelled_metadata.csv``), drawn at the TRAIN
    #: locations from their own random stream (train and test chips are unchanged by it): the unlabelled pool that
    #: real users have without limit, for distillation (``cloudkd student distill --unlabelled``). 0 = none.
    n_unlabelled: int = 0
    #: more TRAIN chips (with labels), drawn at the train locations from their own random stream after the first
    #: ``n_train``: the train chips and test chips of the dataset without them stay the same, so a data-scaling
    #: study grows the train split and keeps its test split. 0 = none.
    n_extra_train: int = 0
    #: darker ground: every chip's ground (not its clouds or haze) scaled by a gain drawn log-uniformly from
    #: [ground_gain_min, 1] from the chip's own stream, so clouds, ground layout and everything else of the chip stay
    #: what they were. The measured case for it
    #: (``benchmarks/results/cloud_brightness_chips.csv``): the median clear pixel is 0.065 on 25 real chips beyond
    #: Chifunfu and 0.157 on generated ones, a ratio of 0.4; real dim cloud lies over dark ground. 1 = off, what
    #: every dataset was before (a stamp without the field reads back as 1). The default 0.4 was adopted by the
    #: rule set before the measurement (``benchmarks/real_levers.py --levers dark_ground``, 3 seeds, data/README.md).
    ground_gain_min: float = 0.4

    def __post_init__(self):
        if self.size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {self.size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.label_style not in LABEL_STYLES:
            raise ValueError(f"label_style must be one of {LABEL_STYLES}, got {self.label_style!r}")
        if isinstance(self.annotator, dict):  # read back from synth.json
            object.__setattr__(self, "annotator", AnnotatorStyle(**self.annotator))
        if not 0.0 < self.label_threshold < 1.0:
            raise ValueError(f"label_threshold must be in (0, 1), got {self.label_threshold}")
        if self.n_train < 0 or self.n_test < 0 or self.n_train + self.n_test == 0:
            raise ValueError("need at least one chip (n_train + n_test > 0)")
        if self.n_unlabelled < 0:
            raise ValueError(f"n_unlabelled must be >= 0, got {self.n_unlabelled}")
        if self.n_unlabelled and not self.n_train:
            raise ValueError("unlabelled chips are drawn at the train locations: they need n_train > 0")
        if self.n_extra_train < 0:
            raise ValueError(f"n_extra_train must be >= 0, got {self.n_extra_train}")
        if self.n_extra_train and not self.n_train:
            raise ValueError("extra train chips are drawn at the train locations: they need n_train > 0")
        if self.n_train + self.n_test + self.n_unlabelled + self.n_extra_train > 26 ** 4:
            raise ValueError("at most 26^4 chips (ids are 4 lower-case letters)")
        if not 0.0 <= self.label_noise <= 0.5:  # NaN fails too
            raise ValueError(f"label_noise must be in [0, 0.5], got {self.label_noise}")
        if not 0.0 < self.ground_gain_min <= 1.0:  # NaN fails too
            raise ValueError(f"ground_gain_min must be in (0, 1], got {self.ground_gain_min}")


#: fields a dataset's stamp records only when they are used, with the value that means "not used": a stamp
#: written before a field existed, or with it off, lacks it and reads back as off (datasets keep their stamp and
#: reuse). The ground gain's off (1) is not its default (0.4), so an old stamp must not take the default.
OFF_WHEN_UNRECORDED = {"label_noise": 0.0, "n_unlabelled": 0, "n_extra_train": 0, "ground_gain_min": 1.0}

#: the ground gain's own random stream (``np.random.default_rng([seed, GROUND_STREAM])``)
GROUND_STREAM = 2


def ground_gain(seed: int, gain_min: float) -> float:
    """The chip's ground gain: log-uniform in [gain_min, 1] from its own stream (1.0 when ``gain_min`` is 1)."""
    if gain_min >= 1.0:
        return 1.0
    u = np.random.default_rng([seed, GROUND_STREAM]).random()
    return float(math.exp(math.log(gain_min) * u))


#: the annotator's own random stream: the chip of seed ``s`` is labelled from ``np.random.default_rng([s, 1])``
ANNOTATOR_STREAM = 1


def chip_label(canvas: Dict[str, object], cfg: SynthConfig, stream: int = ANNOTATOR_STREAM,
               style: Optional[AnnotatorStyle] = None) -> np.ndarray:
    """The label (uint8, size x size) of a chip from its padded canvas (``render_chip(..., canvas=True)["canvas"]``):
    the label rule of ``cfg`` on the whole canvas, cropped to the chip, 0 on the nodata wedge. With the defaults it
    is the chip's own label (the one :func:`render_chip` returns and the dataset holds); another annotator ``stream``
    is an independent draw of the same annotator, another ``style`` another annotator (annotator rule only)."""
    sl = canvas["crop"]
    if cfg.label_style == "opacity":
        if stream != ANNOTATOR_STREAM or style is not None:
            raise ValueError("the opacity label rule draws nothing and has no style: stream and style are for "
                             "label_style='annotator'")
        label = opacity_label(canvas["alpha"], cfg.label_threshold)[sl].astype(np.uint8)
    else:  # the annotator draws from its own random stream: both rules label the very same image
        label = annotator_label(canvas["alpha"], np.random.default_rng([canvas["seed"], stream]),
                                style or cfg.annotator, canvas["brightening"])[sl].astype(np.uint8)
    if canvas["nodata"] is not None:
        label[canvas["nodata"]] = 0
    return label


def render_chip(seed: int, location: Location, cfg: SynthConfig, canvas: bool = False) -> Dict[str, object]:
    """One chip: ``dn`` uint16 (4, size, size), ``label`` uint8 (size, size), ``alpha``, ``shadow``, ``cover``,
    ``deck`` (where a deck is in the shadow of higher cloud, 0-1) and ``regime``. With ``canvas``, also
    ``canvas``: what the label is drawn from, for :func:`chip_label` (``seed``, the padded canvas's ``alpha`` and
    ``brightening``, the ``crop`` slices of the chip in it and the ``nodata`` wedge, a (size, size) mask or None)."""
    rng = np.random.default_rng(seed)
    size = cfg.size
    pad = max(16, size // 6)
    sp = _Spectral(size + 2 * pad)
    d = cfg.difficulty

    ground, cover_map = render_ground(rng, sp, location.covers, location.relief, d)
    # seasonal / illumination variation of the whole scene
    ground *= rng.uniform(0.85, 1.15)
    gain = ground_gain(seed, cfg.ground_gain_min)
    if gain < 1.0:  # a darker ground under the same clouds
        ground = ground * np.float32(gain)
    az = rng.uniform(0, 2 * math.pi)  # sun azimuth (image coordinates)
    cl = render_clouds(rng, sp, cfg, location.cloudiness, az)
    thick, thin = cl["thick"], cl["thin"]

    # shadows: the opacity shifted away from the sun by the cloud height, softened
    dist = rng.uniform(0.2, 1.0) * pad  # cloud height / tan(sun elevation), up to ~850 m at 10 m pixels
    dy, dx = int(round(-dist * math.sin(az))), int(round(-dist * math.cos(az)))
    shadow = np.roll(thick + 0.3 * thin, (dy, dx), axis=(0, 1))
    shadow = np.clip(sp.blur(shadow, rng.uniform(1.0, 3.0)), 0, 1) * rng.uniform(0.5, 0.85)
    ground = ground * (1.0 - shadow)[None]

    alpha = 1.0 - (1.0 - thick) * (1.0 - thin)
    toa = ground * (1.0 - alpha)[None] + thick[None] * cl["r_thick"] + (thin * (1.0 - thick))[None] * cl["r_thin"]
    brightening = (toa[:3] - ground[:3]).mean(axis=0)  # what the cloud adds to the visible bands: what shows

    # haze: smooth additive path radiance, stronger in blue
    haze_amp = rng.uniform(0.0, 0.02 + 0.16 * d)
    haze = haze_amp * _sigmoid(2.0 * sp.noise(rng, 3.5) + rng.normal(0, 1))
    toa = toa + HAZE_SHAPE[:, None, None] * haze[None]
    toa = toa + rng.normal(0.0, 0.003, toa.shape).astype(np.float32) * (0.5 + 0.5 * rng.random())

    # crop the canvas to the chip
    sl = (slice(pad, pad + size), slice(pad, pad + size))
    toa = toa[(slice(None),) + sl]
    dn = np.clip(np.rint(toa * SCALE), 1, 65535).astype(np.uint16)

    # rare nodata wedge (swath edge): DN 0 in every band, label 0
    wedge = None
    if rng.random() < cfg.p_nodata:
        yy, xx = np.mgrid[0:size, 0:size]
        a = rng.uniform(0, 2 * math.pi)
        off = rng.uniform(0.55, 0.85) * size
        wedge = (xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a) > off - size / 2
        dn[:, wedge] = 0
    view = {"seed": seed, "alpha": alpha, "brightening": brightening, "crop": sl, "nodata": wedge}
    out = {"dn": dn, "label": chip_label(view, cfg), "alpha": alpha[sl], "shadow": shadow[sl],
           "cover": cover_map[sl], "deck": cl["deck"][sl], "regime": cl["regime"]}
    if canvas:
        out["canvas"] = view
    return out


# ----------------------------------------------------------------------------------------------------------------
# Writing a dataset
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ChipPlan:
    chip_id: str
    split: str
    location: str
    datetime: str
    seed: int
    easting: float
    northing: float


def _chip_ids(rng: np.random.Generator, n: int) -> List[str]:
    codes = rng.choice(26 ** 4, size=n, replace=False)
    out = []
    for c in codes:
        s = ""
        for _ in range(4):
            c, r = divmod(int(c), 26)
            s = chr(97 + r) + s
        out.append(s)
    return out


def split_locations(cfg: SynthConfig) -> Tuple[List[Location], List[Location]]:
    """Disjoint train / test locations: every 3rd catalogue entry (offset by the seed) is held out for test."""
    off = cfg.seed % 3
    test = [loc for i, loc in enumerate(LOCATIONS) if i % 3 == off]
    train = [loc for i, loc in enumerate(LOCATIONS) if i % 3 != off]
    if cfg.n_train_locations:
        train = train[: cfg.n_train_locations]
    if cfg.n_test_locations:
        test = test[: cfg.n_test_locations]
    if cfg.n_test == 0:
        test = []
    if cfg.n_train == 0:
        train = []
    return train, test


#: the random stream of the unlabelled chips' plan (seeded with (seed, 20211108, this))
UNLABELLED_STREAM = int.from_bytes(b"unlabelled", "big")
#: the random stream of the extra train chips' plan (``SynthConfig.n_extra_train``)
EXTRA_TRAIN_STREAM = int.from_bytes(b"extratrain", "big")


def plan_dataset(cfg: SynthConfig) -> List[ChipPlan]:
    """Deterministic plan of every chip (id, split, location, datetime, seed, georeference)."""
    rng = np.random.default_rng([cfg.seed, 20211108])
    ids = _chip_ids(rng, cfg.n_train + cfg.n_test)
    train_locs, test_locs = split_locations(cfg)
    # each location has two acquisitions (2018-2020) and a tile origin; chips sit on the tile's 512-px grid
    loc_info = {}
    for loc in train_locs + test_locs:
        days = rng.integers(0, 3 * 365, size=2)
        secs = rng.integers(8 * 3600, 11 * 3600, size=2)
        dates = [(np.datetime64("2018-01-01T00:00:00") + np.timedelta64(int(dd), "D") + np.timedelta64(int(ss), "s"))
                 for dd, ss in zip(days, secs)]
        e0 = float(rng.integers(20, 60) * 10000)
        n0 = float(abs(loc.lat) * 110946.0) // 10 * 10
        if loc.lat < 0:
            n0 = 10_000_000.0 - n0
        loc_info[loc.name] = ([str(t) + "Z" for t in dates], e0, n0)
    step = cfg.size * 10.0

    def place(r: np.random.Generator, chip_id: str, split: str, locs) -> ChipPlan:
        """A chip at a location of ``locs``: one of its two dates, a grid cell of its tile, a render seed."""
        loc = locs[int(r.integers(len(locs)))]
        dates, e0, n0 = loc_info[loc.name]
        gx, gy = r.integers(0, 21, size=2)
        return ChipPlan(chip_id, split, loc.name, dates[int(r.integers(2))], int(r.integers(2 ** 31 - 1)),
                        e0 + gx * step, n0 - gy * step)

    plans = [place(rng, chip_id, "train", train_locs) if i < cfg.n_train else place(rng, chip_id, "test", test_locs)
             for i, chip_id in enumerate(ids)]
    def more(stream: int, n: int, split: str) -> List[ChipPlan]:
        """``n`` chips at the train locations from a random stream of their own, with ids not yet taken: the chips
        planned before them stay what they were."""
        r = np.random.default_rng([cfg.seed, 20211108, stream])
        taken = {p.chip_id for p in plans}
        return [place(r, chip_id, split, train_locs)
                for chip_id in [c for c in _chip_ids(r, n + len(taken)) if c not in taken][:n]]

    # the unlabelled pool after the labelled chips, the extra train chips after everything else
    if cfg.n_unlabelled:
        plans += more(UNLABELLED_STREAM, cfg.n_unlabelled, "unlabelled")
    if cfg.n_extra_train:
        plans += more(EXTRA_TRAIN_STREAM, cfg.n_extra_train, "train")
    return plans


def _write_chip(args) -> Tuple[str, float, str, int]:
    """Render and write one chip: (chip id, cloud fraction of its label, regime, nodata pixels)."""
    plan, cfg, root = args
    out = render_chip(plan.seed, LOCATIONS_BY_NAME[plan.location], cfg)
    tags = geotiff_tags(LOCATIONS_BY_NAME[plan.location].epsg, plan.easting, plan.northing)
    feat = Path(root) / f"{plan.split}_features"
    tmp = feat / f".tmp-{plan.chip_id}"
    final = feat / plan.chip_id
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dt = plan.datetime.replace("T", " ").rstrip("Z").replace("-", ":")
    for b, band in enumerate(BANDS):
        write_band(tmp / f"{band}.tif", out["dn"][b], tags, datetime=dt)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if plan.split != "unlabelled":
        write_mask(Path(root) / f"{plan.split}_labels" / f"{plan.chip_id}.tif", out["label"], tags)
    return plan.chip_id, float(out["label"].mean()), str(out["regime"]), int(np.count_nonzero(out["dn"][0] == 0))


def recorded_config(root: os.PathLike | str) -> SynthConfig:
    """The config a complete dataset written by :func:`synthesize` was generated with (its ``synth.json``)."""
    root = Path(root)
    stamp = root / "synth.json"
    if (root / UNFINISHED).is_file():
        raise DataError(f"{root}: its generation is unfinished ({root / UNFINISHED})")
    try:
        info = json.loads(stamp.read_text())
    except FileNotFoundError:
        raise DataError(f"{root}: no {stamp.name}: not a dataset written by cloudkd synth") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{stamp}: not valid JSON ({e})") from None
    if info.get("generator") != __name__ or not isinstance(info.get("config"), dict):
        raise DataError(f"{stamp}: not written by {__name__} (generator {info.get('generator')!r})")
    return SynthConfig(**{**OFF_WHEN_UNRECORDED, **info["config"]})


def synthesize(root: os.PathLike | str, cfg: SynthConfig = SynthConfig(), workers: int = 0,
               overwrite: bool = False, progress: bool = True) -> SynthResult:
    """Write the dataset under ``root`` (train_* and test_* in the On Cloud N layout, test labels included).

    Re-running with the same config reuses what is there (``synth.json`` is written last, so its presence
    means the dataset is complete, unless the ``generation.unfinished`` marker of an interrupted run is still
    there: that folder is generated again). A folder holding anything else is refused unless ``overwrite``.

    With ``cfg.label_noise`` > 0 the labels of some train chips are then replaced by wrong ones
    (:func:`apply_label_noise`); ``train_synth_info.csv`` gains the columns ``label_noise`` (the kind, '' when
    clean) and ``noise_source`` (a swap's source chip), while ``cloud_fraction`` stays the true one.
    """
    import time

    root = Path(root)
    stamp = root / "synth.json"
    want = asdict(cfg)
    for name, off in OFF_WHEN_UNRECORDED.items():
        if want[name] == off:  # recorded only when used: datasets without them keep the stamp (and reuse) they had
            del want[name]
    if claim_root(root, stamp, want, overwrite):
        return SynthResult(root, cfg.n_train, cfg.n_test, 0.0, True)

    t0 = time.perf_counter()
    plans = plan_dataset(cfg)
    jobs = [(p, cfg, str(root)) for p in plans]
    workers = workers or min(os.cpu_count() or 1, 8)
    results = []
    iterator = None
    pool = None
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers)
        iterator = pool.imap(_write_chip, jobs, chunksize=1)
    else:
        iterator = map(_write_chip, jobs)
    try:
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(jobs), desc="synth", unit="chip")
        for r in iterator:
            results.append(r)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    frac = {cid: f for cid, f, _, _ in results}
    regime = {cid: g for cid, _, g, _ in results}
    # label noise last: it needs other chips' labels; before the stamp, so an interrupted run stays unfinished
    noise = apply_label_noise(root, cfg, plans, frac, {cid: k for cid, _, _, k in results}) \
        if cfg.label_noise else {}
    for split in ("train", "test", "unlabelled"):
        rows = [p for p in plans if p.split == split]
        if not rows:
            continue
        df = pd.DataFrame({
            "chip_id": [p.chip_id for p in rows],
            "location": [p.location for p in rows],
            "datetime": [p.datetime for p in rows],
            "cloudpath": [f"az://./{split}_features/{p.chip_id}" for p in rows],
        }).sort_values("chip_id")
        atomic_write(root / f"{split}_metadata.csv", lambda tmp: df.to_csv(tmp, index=False))
        extra = pd.DataFrame({"chip_id": df["chip_id"], "location": df["location"],
                              "cloud_fraction": [round(frac[c], 5) for c in df["chip_id"]],
                              "regime": [regime[c] for c in df["chip_id"]]})
        if cfg.label_noise and split == "train":  # the kind of wrong label ('' = clean) and a swap's source
            extra["label_noise"] = [noise.get(c, ("", ""))[0] for c in df["chip_id"]]
            extra["noise_source"] = [noise.get(c, ("", ""))[1] for c in df["chip_id"]]
        atomic_write(root / f"{split}_synth_info.csv", lambda tmp: extra.to_csv(tmp, index=False))
    seconds = time.perf_counter() - t0
    finish_root(root, stamp, {"config": want, "seconds": round(seconds, 2),
                              "generator": "cloudkd.data.synth.sentinel2"})
    return SynthResult(root, cfg.n_train, cfg.n_test, seconds, False, frac)
