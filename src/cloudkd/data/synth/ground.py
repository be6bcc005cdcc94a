"""The ground under the clouds: a land-cover map weighted by the location's cover mix, each cover a textured
mixture of endmember spectra (canopy, crop parcels, dunes, settlements, snow, water, rivers), with relief shading."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from .catalogue import BRIGHT_COVERS, COVERS, ENDMEMBERS
from .noise import _sigmoid, _Spectral


def _mix(a: str, b: str, frac: np.ndarray) -> np.ndarray:
    """Linear mixture of two endmembers: (4, H, W) = frac * a + (1 - frac) * b."""
    ea = np.asarray(ENDMEMBERS[a], np.float32)[:, None, None]
    eb = np.asarray(ENDMEMBERS[b], np.float32)[:, None, None]
    return frac[None] * ea + (1.0 - frac[None]) * eb


def _spectrum(name: str) -> np.ndarray:
    return np.asarray(ENDMEMBERS[name], np.float32)[:, None, None]

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
