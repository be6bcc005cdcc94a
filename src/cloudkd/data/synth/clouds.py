"""Clouds: thick and thin opacity fields with soft fractal edges, and the bright, nearly white reflectance of their
tops (dimmed where a deck lies in the shadow of higher cloud)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Tuple

import numpy as np

from .catalogue import CLOUD_SHAPE
from .noise import _sigmoid, _Spectral

if TYPE_CHECKING:
    from .sentinel2 import SynthConfig


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
