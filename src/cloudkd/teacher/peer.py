"""The real-trained peer, ukis-csmask (DLR; ``pip install "ukis-csmask[cpu]"``), an optional import.

Its 4-band L2A model (U-Net with an EfficientNet-B4 encoder, 19.5 M parameters, ONNX) was trained on real
Sentinel-2 and Landsat scenes with cloud and cloud-shadow labels. It takes reflectance (``(H, W, 4)`` blue,
green, red, NIR as float32), normalises it with its own statistics, predicts 256x256 tiles with overlap and
returns classes 0 clear, 1 cloud, 2 cloud shadow; cloud here is class 1. The project never requires it: every
use goes through :func:`available` / :func:`load` and says how to install it when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..common.errors import DataError

NAME = "ukis-csmask"
INSTALL = 'pip install "ukis-csmask[cpu]"'


def available() -> bool:
    try:
        import ukis_csmask  # noqa: F401
    except ImportError:
        return False
    return True


def load():
    """The ``ukis_csmask`` module, or a DataError saying how to install it."""
    try:
        import ukis_csmask
    except ImportError as exc:
        raise DataError(f"the peer model needs the optional package ukis-csmask ({exc}); install it with: "
                        f"{INSTALL}") from None
    return ukis_csmask


def model_file() -> Path:
    """The installed peer's 4-band L2A ONNX model (its normalisation statistics sit in the .json beside it)."""
    return Path(load().__file__).parent / "model_4b_l2a.onnx"


def params() -> int:
    import onnx

    m = onnx.load(str(model_file()))
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))


def predict_chip(refl: np.ndarray, threads: int = 0) -> np.ndarray:
    """uint8 (H, W) cloud mask of a (4, H, W) reflectance chip (B02, B03, B04, B08), as the peer ships."""
    load()
    from ukis_csmask.mask import CSmask as csm
    img = np.ascontiguousarray(np.asarray(refl, np.float32).transpose(1, 2, 0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = csm(img, band_order=["blue", "green", "red", "nir"], product_level="l2a",
                  intra_op_num_threads=threads, inter_op_num_threads=threads)
    return (out.csm[..., 0] == 1).astype(np.uint8)


def predict_folder(features_dir: os.PathLike | str, out_dir: os.PathLike | str,
                   chip_ids: Optional[Iterable[str]] = None, progress: bool = False) -> int:
    """Write ``out_dir/{chip_id}.tif`` peer masks (submission format) for the chips of a features folder."""
    from ..data.chips import list_chip_ids, read_chip, write_mask

    load()
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    ids = list(chip_ids) if chip_ids is not None else list_chip_ids(features_dir)
    it = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc=f"{NAME}: predict", unit="chip")
    for chip_id in it:
        write_mask(out_dir / f"{chip_id}.tif", predict_chip(read_chip(features_dir / chip_id)))
    return len(ids)


class PeerTeacher:
    """The peer as an online teacher (``cloudkd distill --teacher-onnx ukis-csmask``): ``logits(x)`` takes the
    project's normalised batch (N, 4, H, W) and returns cloud logits (N, 1, H, W).

    The adapter undoes the project's normalisation (reflectance, clipped at REFL_MAX as every model sees it),
    applies the peer's own per-band statistics, runs its 256x256 model on tiles (the batch reflect-padded to
    whole tiles) and turns its three classes into one cloud logit, ``z_cloud - logsumexp(z_clear, z_shadow)``
    (cloud shadow counts as not cloud, as in the On Cloud N labels).
    """

    TILE = 256

    def __init__(self, threads: int = 0):
        import json

        import onnxruntime as ort

        path = model_file()
        stats = json.loads(path.with_suffix(".json").read_text())["data"]["dataset_statistics"]["img"]
        self.mean = np.asarray(stats[0], np.float32)[None, :, None, None]
        self.std = np.asarray(stats[1], np.float32)[None, :, None, None]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, x):
        import torch

        from ..data.normalise import MEAN, STD

        arr = x.detach().cpu().numpy().astype(np.float32)
        refl = arr * np.asarray(STD, np.float32)[None, :, None, None] + np.asarray(MEAN, np.float32)[None, :, None, None]
        z = (refl - self.mean) / self.std
        n, _, h, w = z.shape
        t = self.TILE
        ph, pw = (-h) % t, (-w) % t
        if ph or pw:
            z = np.pad(z, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
        H, W = z.shape[2:]
        tiles = z.reshape(n, 4, H // t, t, W // t, t).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 4, t, t)
        out = np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(tiles)})[0], np.float32)
        out = out.reshape(n, H // t, W // t, 3, t, t).transpose(0, 3, 1, 4, 2, 5).reshape(n, 3, H, W)[:, :, :h, :w]
        rest = np.logaddexp(out[:, 0], out[:, 2])
        return torch.from_numpy(np.ascontiguousarray((out[:, 1] - rest)[:, None])).to(x.device)
