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
train labels wrong on purpose, the way real labels are (:func:`apply_label_noise`), to score label audits.

**Difficulty** in [0, 1] raises the share of thin clouds, the haze, the softness of cloud edges and the weight
of bright, white ground (snow, desert, bright roofs). The default (0.7) is calibrated so that the fitted
brightness/whiteness threshold scores a global Jaccard of about 0.6-0.75 on held-out locations (see
``data/README.md`` for the measured numbers and the comparison with the real chips).
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
from ..chips import UNFINISHED, read_chip_dn, read_label, write_band, write_mask
from ..normalise import BANDS, SCALE

# ----------------------------------------------------------------------------------------------------------------
# Spectra (surface reflectance in B02, B03, B04, B08), typical Sentinel-2 L2A values
# ----------------------------------------------------------------------------------------------------------------
ENDMEMBERS: Dict[str, Tuple[float, float, float, float]] = {
    "water_clear": (0.045, 0.040, 0.022, 0.012),
    "water_turbid": (0.065, 0.085, 0.070, 0.035),
    "veg_dense": (0.025, 0.055, 0.030, 0.380),
    "veg_dry": (0.055, 0.080, 0.090, 0.240),
    "soil_dark": (0.060, 0.085, 0.110, 0.170),
    "soil_bright": (0.120, 0.165, 0.225, 0.290),
    "sand": (0.200, 0.280, 0.360, 0.430),
    "rock": (0.090, 0.110, 0.125, 0.160),
    "snow_fresh": (0.860, 0.840, 0.810, 0.700),
    "snow_old": (0.550, 0.540, 0.510, 0.400),
    "snow_dirty": (0.300, 0.300, 0.290, 0.250),
    "salt": (0.420, 0.450, 0.470, 0.500),
    "concrete": (0.150, 0.160, 0.170, 0.210),
    "roof_dark": (0.070, 0.080, 0.090, 0.120),
    "roof_bright": (0.300, 0.320, 0.330, 0.360),
}
#: Cloud-top spectral shape (B02, B03, B04, B08) relative to B02, from the thick cloud of real chip adxp.
CLOUD_SHAPE = np.array([1.00, 0.93, 0.87, 0.80], np.float32)
#: Haze (path radiance) spectral weights: strongest in blue, weakest in NIR.
HAZE_SHAPE = np.array([1.00, 0.80, 0.60, 0.35], np.float32)

COVERS = ("water", "forest", "cropland", "grassland", "bare", "desert", "snow", "urban")
#: Covers made brighter / more frequent by the difficulty knob (bright, white ground that looks like cloud).
BRIGHT_COVERS = ("snow", "desert", "urban")


@dataclass(frozen=True)
class Location:
    name: str
    lat: float
    lon: float
    covers: Dict[str, float]
    relief: float = 0.2  # 0 flat .. 1 mountainous
    cloudiness: float = 1.0  # scales the chance of cloud cover

    @property
    def epsg(self) -> int:
        zone = int((self.lon + 180) // 6) + 1
        return (32600 if self.lat >= 0 else 32700) + zone


# A catalogue of places, each a biome with its own cover mix, in eight triplets of similar biomes. The held-out
# (test) locations take one place of every triplet, so every seed's test split covers every kind of scene.
LOCATIONS: Tuple[Location, ...] = (
    # arctic coasts
    Location("Nuuk", 64.2, -51.7, {"snow": .45, "water": .30, "bare": .25}, .70, 1.1),
    Location("Tromso", 69.6, 18.9, {"snow": .50, "water": .30, "forest": .20}, .75, 1.2),
    Location("Reykjavik", 64.1, -21.9, {"snow": .30, "bare": .40, "water": .30}, .60, 1.2),
    # high mountains
    Location("Lhasa", 29.7, 91.1, {"snow": .30, "bare": .45, "urban": .10, "grassland": .15}, .90, .8),
    Location("La Paz", -16.5, -68.1, {"bare": .40, "snow": .20, "urban": .20, "grassland": .20}, .90, .9),
    Location("Kathmandu", 27.7, 85.3, {"snow": .20, "forest": .30, "cropland": .30, "urban": .20}, .85, 1.1),
    # sand deserts
    Location("Tamanrasset", 22.8, 5.5, {"desert": .60, "bare": .35, "urban": .05}, .35, .6),
    Location("Riyadh", 24.7, 46.7, {"desert": .60, "urban": .30, "bare": .10}, .10, .5),
    Location("Alice Springs", -23.7, 133.9, {"desert": .40, "grassland": .30, "bare": .30}, .30, .6),
    # desert cities and oases
    Location("Dubai", 25.2, 55.3, {"desert": .50, "urban": .30, "water": .20}, .05, .6),
    Location("Phoenix", 33.4, -112.1, {"desert": .40, "urban": .35, "cropland": .25}, .30, .6),
    Location("Cairo", 30.0, 31.2, {"desert": .35, "urban": .35, "cropland": .20, "water": .10}, .05, .5),
    # humid tropics
    Location("Manaus", -3.1, -60.0, {"forest": .70, "water": .25, "urban": .05}, .05, 1.4),
    Location("Jakarta", -6.2, 106.8, {"urban": .40, "forest": .30, "water": .30}, .10, 1.4),
    Location("Lagos", 6.5, 3.4, {"urban": .35, "water": .25, "forest": .25, "cropland": .15}, .05, 1.3),
    # East African lakes, savanna and highlands
    Location("Chifunfu", -2.6, 32.5, {"water": .30, "grassland": .30, "cropland": .30, "forest": .10}, .10, 1.2),
    Location("Nairobi", -1.3, 36.8, {"grassland": .40, "urban": .25, "cropland": .35}, .35, 1.0),
    Location("Addis Ababa", 9.0, 38.7, {"urban": .30, "cropland": .40, "grassland": .20, "bare": .10}, .40, 1.0),
    # temperate and monsoon cropland
    Location("Rotterdam", 51.9, 4.5, {"urban": .30, "cropland": .45, "water": .25}, .00, 1.2),
    Location("Winnipeg", 49.9, -97.1, {"cropland": .70, "water": .10, "urban": .10, "forest": .10}, .00, 1.0),
    Location("Dhaka", 23.8, 90.4, {"cropland": .45, "water": .30, "urban": .25}, .00, 1.3),
    # continental: taiga, steppe, Andes foothills
    Location("Yakutsk", 62.0, 129.7, {"forest": .50, "snow": .30, "water": .20}, .20, 1.0),
    Location("Ulaanbaatar", 47.9, 106.9, {"grassland": .50, "bare": .30, "urban": .20}, .45, .8),
    Location("Santiago", -33.4, -70.6, {"snow": .20, "urban": .30, "cropland": .30, "bare": .20}, .80, .9),
)


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
    #: :func:`apply_label_noise`. Test labels stay clean. 0 (the default) writes exactly what it wrote before.
    label_noise: float = 0.0
    #: chips written without labels to ``unlabelled_features/`` (``unlabelled_metadata.csv``), drawn at the TRAIN
    #: locations from their own random stream (train and test chips are unchanged by it): the unlabelled pool that
    #: real users have without limit, for distillation (``cloudkd student distill --unlabelled``). 0 = none.
    n_unlabelled: int = 0

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
        if self.n_train + self.n_test + self.n_unlabelled > 26 ** 4:
            raise ValueError("at most 26^4 chips (ids are 4 lower-case letters)")
        if not 0.0 <= self.label_noise <= 0.5:  # NaN fails too
            raise ValueError(f"label_noise must be in [0, 0.5], got {self.label_noise}")


# ----------------------------------------------------------------------------------------------------------------
# Noise primitives
# ----------------------------------------------------------------------------------------------------------------
class _Spectral:
    """Fractal (1/f^beta) noise by spectral synthesis on an n x n canvas, with Gaussian blur in the same domain."""

    def __init__(self, n: int):
        self.n = n
        fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
        fx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
        self.fy, self.fx = fy, fx
        self.f2 = fx ** 2 + fy ** 2

    def noise(self, rng: np.random.Generator, beta: float, stretch: float = 1.0, angle: float = 0.0,
              fmin: float = 0.0) -> np.ndarray:
        """Zero-mean unit-variance fractal noise; ``stretch`` > 1 elongates features along ``angle``."""
        if stretch != 1.0:
            c, s = math.cos(angle), math.sin(angle)
            u = self.fx * c + self.fy * s
            v = -self.fx * s + self.fy * c
            f2 = u ** 2 * stretch ** 2 + v ** 2
        else:
            f2 = self.f2
        f2 = np.maximum(f2, max(fmin, 1.0 / self.n) ** 2)
        amp = f2 ** (-beta / 4.0)
        amp[0, 0] = 0.0
        spec = (rng.standard_normal(amp.shape, np.float32) + 1j * rng.standard_normal(amp.shape, np.float32)) * amp
        out = np.fft.irfft2(spec, s=(self.n, self.n)).astype(np.float32)
        out -= out.mean()
        out /= out.std() + 1e-12
        return out

    def blur(self, img: np.ndarray, sigma: float) -> np.ndarray:
        if sigma <= 0:
            return img
        g = np.exp(-2.0 * (math.pi * sigma) ** 2 * self.f2)
        return np.fft.irfft2(np.fft.rfft2(img) * g, s=img.shape).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _mix(a: str, b: str, frac: np.ndarray) -> np.ndarray:
    """Linear mixture of two endmembers: (4, H, W) = frac * a + (1 - frac) * b."""
    ea = np.asarray(ENDMEMBERS[a], np.float32)[:, None, None]
    eb = np.asarray(ENDMEMBERS[b], np.float32)[:, None, None]
    return frac[None] * ea + (1.0 - frac[None]) * eb


def _spectrum(name: str) -> np.ndarray:
    return np.asarray(ENDMEMBERS[name], np.float32)[:, None, None]


# ----------------------------------------------------------------------------------------------------------------
# Ground
# ----------------------------------------------------------------------------------------------------------------
def _parcels(rng: np.random.Generator, sp: "_Spectral", size_px: Tuple[float, float], angle: float,
             warp: float = 4.0) -> np.ndarray:
    """Integer id map of irregular parcels (crop fields, settlement plots): the Voronoi cells of a jittered grid
    (cells of ``size_px`` along and across a direction ``angle``) on coordinates bent by smooth noise of
    ``warp`` px, so edges are neither straight nor square."""
    n = sp.n
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if warp > 0:
        xx = xx + warp * sp.noise(rng, 3.5)
        yy = yy + warp * sp.noise(rng, 3.5)
    c, s = math.cos(angle), math.sin(angle)
    gu = (xx * c + yy * s) / rng.uniform(*size_px)
    gv = (-xx * s + yy * c) / rng.uniform(*size_px)
    iu, iv = np.floor(gu), np.floor(gv)
    fu, fv = gu - iu, gv - iv  # position inside the grid cell
    iu, iv = iu.astype(np.int64) + 4096, iv.astype(np.int64) + 4096
    table = rng.uniform(0.1, 0.9, size=(2, 8191)).astype(np.float32)  # each grid cell's seed point, hashed
    best = np.full(gu.shape, np.inf, np.float32)
    ids = np.zeros(gu.shape, np.int64)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            cell = (iu + du) * 8192 + (iv + dv)
            key = cell % 8191
            d = (fu - du - table[0, key]) ** 2 + (fv - dv - table[1, key]) ** 2
            closer = d < best
            best[closer] = d[closer]
            ids[closer] = cell[closer]
    return ids


def _per_parcel(rng: np.random.Generator, ids: np.ndarray, k: int = 1) -> np.ndarray:
    """Random value(s) per parcel id, looked up for every pixel (ids hashed into a table of 2^16 draws)."""
    vals = rng.random((65536, k), dtype=np.float32)
    return vals[(ids * 2_654_435_761 >> 7) & 0xFFFF]


def _parcel_edges(ids: np.ndarray) -> np.ndarray:
    e = np.zeros(ids.shape, bool)
    e[1:, :] |= ids[1:, :] != ids[:-1, :]
    e[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    return e


def render_cover(cover: str, rng: np.random.Generator, sp: _Spectral, dem: np.ndarray) -> np.ndarray:
    """Reflectance (4, n, n) of one land cover over the whole canvas (only used where the cover is)."""
    n = sp.n
    if cover == "water":
        turb = _sigmoid(1.5 * sp.noise(rng, 3.5) + rng.normal(0, 1.0))
        refl = _mix("water_turbid", "water_clear", turb)
        refl *= 1 + 0.04 * sp.noise(rng, 1.5)
    elif cover == "forest":
        dense = np.clip(0.8 + 0.15 * sp.noise(rng, 2.5), 0, 1)
        refl = _mix("veg_dense", "veg_dry", dense)
        refl *= 1 + 0.12 * sp.noise(rng, 1.2)  # canopy texture
    elif cover == "cropland":
        # small irregular fields of similar crops at different stages, faint paths along some field edges
        ids = _parcels(rng, sp, (10, 32), rng.uniform(0, math.pi))
        v = _per_parcel(rng, ids, 2)
        green_share = rng.uniform(0.3, 0.8)
        vigour = np.clip(rng.uniform(0.3, 0.7) + 0.35 * (v[..., 1] - 0.5) + 0.08 * sp.noise(rng, 2.0), 0, 1)
        green = _mix("veg_dense", "veg_dry", vigour)
        bare = _mix("soil_bright", "soil_dark", np.clip(vigour + 0.2 * sp.noise(rng, 2.5), 0, 1))
        state = np.clip((v[..., 0] - (1 - green_share)) * 6 + 0.5, 0, 1)  # soft field state, mixed edges
        refl = state[None] * green + (1 - state[None]) * bare
        paths = _parcel_edges(ids) & (sp.noise(rng, 3.0) > 0.3)
        refl = np.where(paths[None], 0.5 * refl + 0.5 * _spectrum("soil_bright"), refl)
        refl *= 1 + 0.06 * sp.noise(rng, 1.5)
    elif cover == "grassland":
        green = _sigmoid(1.2 * sp.noise(rng, 2.8) + rng.normal(0, 0.8))
        refl = _mix("veg_dry", "soil_bright", green)
        trees = sp.noise(rng, 1.0) > 1.6  # scattered trees
        refl = np.where(trees[None], _spectrum("veg_dense"), refl)
        refl *= 1 + 0.06 * sp.noise(rng, 1.8)
    elif cover == "bare":
        f = _sigmoid(1.5 * sp.noise(rng, 2.8))
        refl = _mix("soil_bright", "soil_dark", f)
        rock = _sigmoid(2.0 * (dem - 0.5))
        refl = rock[None] * _spectrum("rock") + (1 - rock[None]) * refl
        refl *= 1 + 0.08 * sp.noise(rng, 1.6)
    elif cover == "desert":
        f = _sigmoid(1.5 * sp.noise(rng, 3.0) + 0.8)
        refl = _mix("sand", "soil_bright", f)
        if rng.random() < 0.4:  # salt flats / playas: bright, almost white
            salt = sp.noise(rng, 3.2) > rng.uniform(0.5, 1.5)
            refl = np.where(salt[None], _spectrum("salt") * (1 + 0.05 * sp.noise(rng, 2.0))[None], refl)
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) / rng.uniform(6, 14) + 3 * sp.noise(rng, 3.0)
        refl *= 1 + 0.06 * np.sin(phase)  # dune ridges
        refl *= 1 + 0.03 * sp.noise(rng, 1.5)
    elif cover == "snow":
        fresh = _sigmoid(2.0 * sp.noise(rng, 2.6) + rng.normal(0.5, 1.0))
        refl = _mix("snow_fresh", "snow_old", fresh)
        dirty = _sigmoid(2.0 * sp.noise(rng, 2.8) + rng.normal(-1.0, 1.5))  # melting / dirty snow and ice
        refl = dirty[None] * _spectrum("snow_dirty") + (1 - dirty[None]) * refl
        rock = sp.noise(rng, 2.2) + 0.8 * dem > 1.4  # rock outcrops on ridges
        refl = np.where(rock[None], _spectrum("rock"), refl)
        refl *= 1 + 0.03 * sp.noise(rng, 1.5)
    elif cover == "urban":
        # settlements: roofs, yards and trees at a varying density between streets; no uniform blocks
        density = _sigmoid(1.5 * sp.noise(rng, 3.2) + rng.normal(0.5, 0.5))
        yard = _mix("soil_bright", "veg_dry", _sigmoid(1.5 * sp.noise(rng, 2.5)))
        trees = _sigmoid(3.0 * (sp.noise(rng, 2.0) - 0.8))
        yard = trees[None] * _spectrum("veg_dense") + (1 - trees[None]) * yard
        grain = sp.noise(rng, 0.8)  # roofs: small blobs of a few pixels
        built = _sigmoid(4.0 * (grain + 1.2 - 2.4 * (1 - density)))
        kind = sp.noise(rng, 0.6)
        bright = 2.0 - 0.5 * rng.random()  # the brightest roofs are rare
        roof = np.where((kind > bright)[None], _spectrum("roof_bright"),
                        np.where((kind > 0.0)[None], _spectrum("roof_dark"), _spectrum("concrete")))
        refl = built[None] * roof + (1 - built[None]) * yard
        blocks = _parcels(rng, sp, (14, 30), rng.uniform(0, math.pi), warp=3.0)
        streets = _parcel_edges(blocks) & (density > 0.3)
        refl = np.where(streets[None], _spectrum("concrete") * 0.9, refl)
        refl *= 1 + 0.06 * sp.noise(rng, 1.0)
    else:
        raise ValueError(f"unknown land cover {cover!r}")
    return refl.astype(np.float32)


def render_ground(rng: np.random.Generator, sp: _Spectral, covers: Dict[str, float], relief: float,
                  difficulty: float) -> Tuple[np.ndarray, np.ndarray]:
    """Surface reflectance (4, n, n) and the cover index map (n, n) (index into :data:`COVERS`)."""
    dem = sp.noise(rng, 3.2)
    weights = {}
    for c, w in covers.items():
        if c in BRIGHT_COVERS:
            w *= 0.25 + 4.0 * difficulty
        weights[c] = w
    total = sum(weights.values())
    # Each chip sees its location's mix with a random tilt, so some chips are dominated by one cover.
    names = list(weights)
    tilt = rng.dirichlet(np.full(len(names), 1.5))
    score = []
    for i, c in enumerate(names):
        f = sp.noise(rng, 3.0)
        if c == "water":
            f = 0.6 * f - 0.8 * dem
        elif c == "snow":
            f = 0.6 * f + 0.8 * dem
        score.append(f + 1.6 * np.log(0.5 * weights[c] / total + 0.5 * tilt[i] + 1e-6))
    idx_local = np.argmax(np.stack(score), axis=0)
    cover_map = np.asarray([COVERS.index(c) for c in names])[idx_local]
    ground = np.zeros((4, sp.n, sp.n), np.float32)
    for i, c in enumerate(names):
        m = idx_local == i
        if m.any():
            ground = np.where(m[None], render_cover(c, rng, sp, dem), ground)
    # rivers: thin meandering water lines in flat, wet places
    if "water" in covers and rng.random() < 0.5:
        river = np.abs(sp.noise(rng, 3.4)) < rng.uniform(0.01, 0.03)
        ground = np.where(river[None], _spectrum("water_turbid"), ground)
        cover_map = np.where(river, COVERS.index("water"), cover_map)
    # relief shading from the elevation model (sun from the north-west-ish)
    if relief > 0:
        rough = dem + 0.15 * sp.noise(rng, 2.4)
        gy, gx = np.gradient(rough * relief * 60.0)
        az = rng.uniform(0, 2 * math.pi)
        shade = (-gx * math.cos(az) - gy * math.sin(az)) / np.sqrt(1 + gx ** 2 + gy ** 2)
        ground *= np.clip(1 + 0.5 * shade, 0.35, 1.6)[None]
    return np.clip(ground, 0.002, 1.2), cover_map


# ----------------------------------------------------------------------------------------------------------------
# Clouds and atmosphere
# ----------------------------------------------------------------------------------------------------------------
def _thresholded(noise: np.ndarray, coverage: float, softness: float) -> Tuple[np.ndarray, np.ndarray]:
    """Cloud where ``noise`` is in its top ``coverage`` fraction.

    Returns the opacity in [0, 1] (edges ``softness`` noise-std wide, so small softness = sharp edges) and the
    depth inside the cloud (noise above the threshold, in noise-std units; negative outside).
    """
    if coverage <= 0:
        return np.zeros_like(noise), np.full_like(noise, -1.0)
    t = np.quantile(noise, 1.0 - coverage) if coverage < 1 else noise.min() - softness
    depth = noise - t
    return np.clip(depth / softness, 0.0, 1.0) ** 0.8, depth


def _shading(field: np.ndarray, azimuth: float, strength: float) -> np.ndarray:
    """Directional shading of a height field (sun-facing slopes brighter), mean ~1."""
    gy, gx = np.gradient(field)
    return 1.0 + strength * np.tanh(8.0 * (gx * math.cos(azimuth) + gy * math.sin(azimuth)))


def render_clouds(rng: np.random.Generator, sp: _Spectral, cfg: SynthConfig, cloudiness: float,
                  sun_azimuth: float) -> Dict[str, object]:
    """Thick and thin opacity fields (n, n), their reflectances (4, n, n), and the chip's cloud regime."""
    d = cfg.difficulty
    n = sp.n
    zeros = np.zeros((n, n), np.float32)
    p_clear = min(0.9, cfg.p_clear / cloudiness)
    p_overcast = min(0.9 - p_clear, cfg.p_overcast * cloudiness)
    u = rng.random()
    thick, thin = zeros, zeros
    depth = np.full((n, n), -1.0, np.float32)
    height = sp.noise(rng, rng.uniform(2.8, 3.6))
    if u < p_clear:
        regime = "clear"
        # even "clear" chips sometimes carry a wisp of thin cloud
        if rng.random() < 0.3:
            wisp, _ = _thresholded(sp.noise(rng, 3.0, 4.0, rng.uniform(0, math.pi)), rng.uniform(0.05, 0.3), 1.0)
            thin = rng.uniform(0.05, 0.3) * wisp
    elif u < p_clear + p_overcast:
        regime = "overcast"
        base = rng.uniform(0.65 - 0.5 * d, 1.0)
        thick = np.clip(base + 0.25 * height, 0.15, 1.0)
        depth = 2.0 * thick
    else:
        p_thin = 0.1 + 0.8 * d
        kind = rng.choice(["thick", "thin", "mixed"], p=[1 - p_thin, p_thin * 0.5, p_thin * 0.5])
        regime = f"broken-{kind}"
        if kind in ("thick", "mixed"):
            softness = rng.uniform(0.1, 0.3 + 2.0 * d)
            thick, depth = _thresholded(height, rng.uniform(0.05, 0.95), softness)
        if kind in ("thin", "mixed"):
            amax = rng.uniform(0.2, 0.75)
            streak = sp.noise(rng, 3.0, rng.uniform(2.0, 6.0), rng.uniform(0, math.pi))
            thin = amax * _thresholded(streak, rng.uniform(0.2, 0.9), rng.uniform(0.5, 2.0))[0]
    # cloud tops: bright, nearly white, brightest in the cores, puffy (shaded towards the sun)
    # most cloud tops are bright (0.6-1.35, like the real overcast chip adxp at 1.1); some are dim, as over
    # adwp (~0.45), and those are the ones thresholding confuses with bright ground
    b_thick = rng.uniform(0.2, 0.6) if rng.random() < 0.1 + 0.4 * d else rng.uniform(0.6, 1.35)
    core = 1.0 - np.exp(-np.maximum(depth, 0.0) / 0.6)
    puff = _shading(sp.blur(height, 2.0), sun_azimuth, 0.15)
    shape = CLOUD_SHAPE * rng.uniform(0.97, 1.03, 4).astype(np.float32)
    r_thick = b_thick * shape[:, None, None] * ((0.5 + 0.5 * core) * puff)[None]
    deck = zeros
    if regime != "clear" and rng.random() < cfg.p_dim_deck:
        # part of the deck lies in the shadow of higher cloud: the same flat cloud spectrum, dimmed to a B02 of
        # 0.08-0.25 (the grey cloud of real chip adwz: B02..B08 0.12 0.11 0.10 0.09, labelled cloud)
        deck = _sigmoid(4.0 * (sp.noise(rng, 3.5) - rng.uniform(-0.8, 0.8)))
        dim = min(1.0, rng.uniform(0.08, 0.25) / b_thick)
        r_thick = r_thick * (1.0 - (1.0 - dim) * deck)[None]
    r_thin = rng.uniform(0.2, 0.6) * CLOUD_SHAPE[:, None, None] * (1 + 0.08 * sp.noise(rng, 3.0))[None]
    return {"regime": regime, "thick": thick.astype(np.float32), "thin": thin.astype(np.float32),
            "deck": deck.astype(np.float32),
            "r_thick": r_thick.astype(np.float32), "r_thin": r_thin.astype(np.float32)}


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
# Georeferencing tags like the challenge's GeoTIFFs
# ----------------------------------------------------------------------------------------------------------------
def geotiff_tags(epsg: int, easting: float, northing: float, res: float = 10.0) -> List[tuple]:
    """tifffile ``extratags`` for a north-up UTM GeoTIFF (pixel scale, tie point, geokeys, GDAL nodata 0)."""
    zone = epsg % 100
    hemi = "N" if epsg < 32700 else "S"
    ascii_params = f"WGS 84 / UTM zone {zone}{hemi}|WGS 84|"
    c1 = len(f"WGS 84 / UTM zone {zone}{hemi}|")
    keys = (1, 1, 0, 7,
            1024, 0, 1, 1,  # GTModelType: projected
            1025, 0, 1, 1,  # GTRasterType: PixelIsArea
            1026, 34737, c1, 0,  # GTCitation
            2049, 34737, len(ascii_params) - c1, c1,  # GeogCitation
            2054, 0, 1, 9102,  # angular unit: degree
            3072, 0, 1, epsg,  # projected CRS
            3076, 0, 1, 9001)  # linear unit: metre
    return [
        (33550, "d", 3, (res, res, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, float(easting), float(northing), 0.0), True),
        (34735, "H", len(keys), keys, True),
        (34737, "s", 0, ascii_params, True),
        (42113, "s", 0, "0", True),
    ]


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
    plans = []
    for i, chip_id in enumerate(ids):
        split = "train" if i < cfg.n_train else "test"
        locs = train_locs if split == "train" else test_locs
        loc = locs[int(rng.integers(len(locs)))]
        dates, e0, n0 = loc_info[loc.name]
        gx, gy = rng.integers(0, 21, size=2)
        step = cfg.size * 10.0
        plans.append(ChipPlan(chip_id, split, loc.name, dates[int(rng.integers(2))],
                              int(rng.integers(2 ** 31 - 1)), e0 + gx * step, n0 - gy * step))
    if cfg.n_unlabelled:
        # their own stream, after the labelled chips: a dataset with them has the same train and test chips
        urng = np.random.default_rng([cfg.seed, 20211108, UNLABELLED_STREAM])
        taken = set(ids)
        uids = [c for c in _chip_ids(urng, cfg.n_unlabelled + len(taken)) if c not in taken][: cfg.n_unlabelled]
        for chip_id in uids:
            loc = train_locs[int(urng.integers(len(train_locs)))]
            dates, e0, n0 = loc_info[loc.name]
            gx, gy = urng.integers(0, 21, size=2)
            step = cfg.size * 10.0
            plans.append(ChipPlan(chip_id, "unlabelled", loc.name, dates[int(urng.integers(2))],
                                  int(urng.integers(2 ** 31 - 1)), e0 + gx * step, n0 - gy * step))
    return plans


_LOC_BY_NAME = {loc.name: loc for loc in LOCATIONS}


def _write_chip(args) -> Tuple[str, float, str, int]:
    """Render and write one chip: (chip id, cloud fraction of its label, regime, nodata pixels)."""
    plan, cfg, root = args
    out = render_chip(plan.seed, _LOC_BY_NAME[plan.location], cfg)
    tags = geotiff_tags(_LOC_BY_NAME[plan.location].epsg, plan.easting, plan.northing)
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


# ----------------------------------------------------------------------------------------------------------------
# Label noise (SynthConfig.label_noise): wrong train labels of the kinds real annotators make, for scoring audits
# ----------------------------------------------------------------------------------------------------------------
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
    fractions and nodata pixel counts (from :func:`_write_chip`).
    """
    from collections import defaultdict

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
        tags = geotiff_tags(_LOC_BY_NAME[p.location].epsg, p.easting, p.northing)
        write_mask(label_path(p.chip_id), noisy, tags)
        out[p.chip_id] = (kind, source)
    return out


@dataclass
class SynthResult:
    root: Path
    n_train: int
    n_test: int
    seconds: float
    reused: bool
    cloud_fraction: Dict[str, float] = field(default_factory=dict)


def claim_root(root: Path, stamp: Path, want: dict, overwrite: bool) -> bool:
    """Make ``root`` ready for a generator: True when ``stamp`` (written last) records the same config, so the
    dataset is complete and reused; else an empty ``root`` (emptied only with ``overwrite``; a folder holding
    anything else, or another config, is refused) holding only the :data:`~cloudkd.data.chips.UNFINISHED` marker,
    which :func:`finish_root` removes after writing the stamp.

    A folder still holding the marker is an interrupted generation: never reused (even with a stamp), it is emptied
    and generated again (everything in it was written by a generator), unless the generation is still running.

    The output policy: ``overwrite`` empties only a folder a generator of this kind wrote (its ``stamp`` or the
    marker); any other folder that is not empty (a real dataset, a user's folder) is refused even with it."""
    from ...common.outputs import STAMPS, folder_mark, running_elsewhere

    marker = root / UNFINISHED
    if marker.is_file():
        pid = running_elsewhere(marker)
        if pid is not None:
            raise DataError(f"{root}: another generation (pid {pid}) is still writing this folder ({marker})")
        overwrite = True  # an interrupted generation: start again from an empty folder
        stamp.unlink(missing_ok=True)
    if stamp.is_file() and not overwrite:
        try:
            have = json.loads(stamp.read_text()).get("config")
        except json.JSONDecodeError:
            have = None
        if have == want:
            return True
        raise DataError(f"{root}: holds a generated dataset with a different config ({stamp}); "
                        f"choose another folder or pass overwrite")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"{root}: folder is not empty; choose another folder or pass overwrite")
        note = folder_mark(root)
        if note is None:
            raise DataError(f"{root} was not written by cloudkd; remove it yourself (or choose another folder)")
        if note["kind"] not in (STAMPS[stamp.name], STAMPS[UNFINISHED]):
            raise DataError(f"{root}: holds cloudkd's {note['kind']}, not a {STAMPS[stamp.name]}; choose another "
                            f"folder")
        for sub in root.iterdir():
            if sub.name != UNFINISHED:
                shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
    root.mkdir(parents=True, exist_ok=True)
    import socket

    atomic_write(marker, lambda tmp: tmp.write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "config": want,
         "note": "a generation is writing this folder; if no generator runs, it was interrupted: run it again"},
        indent=2)))
    return False


def finish_root(root: Path, stamp: Path, info: dict) -> None:
    """End a generation started by :func:`claim_root`: the stamp (``info``) first, then the marker goes, so a
    folder is complete exactly when it holds the stamp and no marker."""
    atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    (root / UNFINISHED).unlink(missing_ok=True)


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
    return SynthConfig(**info["config"])


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
    for name in ("label_noise", "n_unlabelled"):  # recorded only when used: datasets without them keep the stamp
        if not want[name]:                          # (and the reuse) they had before
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
