"""Noise primitives of the generator: fractal noise and Gaussian blur by spectral synthesis, and a sigmoid."""

from __future__ import annotations

import math

import numpy as np


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
