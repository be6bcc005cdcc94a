"""``cloudkd predict-scene``: a cloud mask for a whole raster (e.g. a 10980 x 10980 Sentinel-2 tile) in bounded
memory.

Input: a folder holding the four band files as GeoTIFFs (``B02.tif, B03.tif, B04.tif, B08.tif``, or ``*_B02.tif``
...; L2A products ship JPEG 2000 files: convert them first, e.g. with gdal_translate) or one multi-band TIFF
((4, H, W) planar or (H, W, 4) interleaved), uint16 reflectance x 10000.

Method: overlapping ``tile`` x ``tile`` windows (stride ``tile - overlap``) are predicted in batches; their
logits are blended with weights that ramp linearly over the overlap (so seams vanish) and the weighted mean is
thresholded. The scene is processed one row of tiles at a time: only that row's input strip (4 x tile x W)
and one accumulation strip are in memory; finished rows stream to the output file as compressed tiles. Memory
therefore grows with the scene's width but not with its height. Input TIFFs are read segment by segment
(strips or tiles, any compression tifffile decodes), never as a whole.

Output: a single-band uint8 mask (1 = cloud) GeoTIFF-readable by tifffile, with the input's georeferencing tags
(ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams) copied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import numpy as np
import tifffile

from ..common.errors import DataError
from ..common.io import atomic_write
from ..data.normalise import BANDS, dn_to_reflectance, normalise
from ..common.infer import DEFAULT_THRESHOLD, masks_from_logits, nodata_mask

GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
OUT_TILE = 256  # the output is written as 256 x 256 compressed tiles, streamed row of tiles by row of tiles


class BandWindows:
    """Row windows of one band of a TIFF, decoded segment by segment (bounded memory)."""

    def __init__(self, path: os.PathLike | str, band: Optional[int] = None):
        self.path = Path(path)
        try:
            self.tif = tifffile.TiffFile(self.path)
            page = self.tif.pages[0]
        except Exception as exc:
            raise DataError(f"{self.path}: not a readable TIFF ({exc})") from None
        self.page = page
        shape = page.shape
        self.band = band
        self.separate = False
        if len(shape) == 2:
            if band not in (None, 0):
                raise DataError(f"{self.path}: single band, but band {band} was asked for")
            self.height, self.width = shape
        elif len(shape) == 3 and page.planarconfig == 2:  # (S, H, W)
            self.separate = True
            self.samples, self.height, self.width = shape
        elif len(shape) == 3:  # (H, W, S)
            self.height, self.width, self.samples = shape
        else:
            raise DataError(f"{self.path}: unsupported TIFF layout with shape {shape}")
        if len(shape) == 3 and (band is None or band >= self.samples):
            raise DataError(f"{self.path}: has {self.samples} bands; band {band} not available")
        self.dtype = page.dtype
        if page.is_tiled:
            self.seg_h, self.seg_w = page.tilelength, page.tilewidth
        else:
            self.seg_h, self.seg_w = min(page.rowsperstrip or self.height, self.height), self.width
        self.ny = -(-self.height // self.seg_h)
        self.nx = -(-self.width // self.seg_w)
        # uncompressed contiguous data (often one huge strip): map it instead of decoding whole segments
        self.mm = tifffile.memmap(self.path, mode="r") if page.is_memmappable else None

    def close(self) -> None:
        self.mm = None
        self.tif.close()

    def geo_extratags(self) -> list:
        out = []
        for code in GEO_TAGS:
            tag = self.page.tags.get(code)
            if tag is not None:
                out.append((tag.code, int(tag.dtype), tag.count, tag.value, True))
        return out

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows [y0, y1) of the band, (y1 - y0, W)."""
        if self.mm is not None:
            if self.mm.ndim == 2:
                return np.array(self.mm[y0:y1])
            return np.array(self.mm[self.band, y0:y1] if self.separate else self.mm[y0:y1, :, self.band])
        out = np.zeros((y1 - y0, self.width), self.dtype)
        fh = self.tif.filehandle
        plane = self.band if self.separate else 0
        for iy in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1):
            for ix in range(self.nx):
                index = (plane * self.ny + iy) * self.nx + ix
                offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
                if count == 0:
                    continue  # sparse segment: zeros
                fh.seek(offset)
                seg, _, _ = self.page.decode(fh.read(count), index)
                seg = seg[0] if seg.ndim == 4 else seg  # (h, w, samples)
                seg = seg[..., 0 if (self.separate or self.band is None) else self.band]
                sy, sx = iy * self.seg_h, ix * self.seg_w
                a, b = max(y0, sy), min(y1, sy + seg.shape[0], self.height)
                w = min(seg.shape[1], self.width - sx)
                if b > a:
                    out[a - y0:b - y0, sx:sx + w] = seg[a - sy:b - sy, :w]
        return out


def open_scene(path: os.PathLike | str) -> List[BandWindows]:
    """The four bands of a scene (folder of band files, or one multi-band TIFF) in the project's band order."""
    p = Path(path)
    if p.is_dir():
        bands = []
        for b in BANDS:
            hits = [p / f"{b}.tif"] if (p / f"{b}.tif").is_file() else sorted(p.glob(f"*_{b}.tif")) + \
                sorted(p.glob(f"*_{b}_*.tif"))
            if not hits:
                jp2 = " (JPEG 2000 band files of L2A products: convert them to GeoTIFF first, e.g. gdal_translate)" \
                    if list(p.glob(f"*{b}*.jp2")) else ""
                raise DataError(f"{p}: no {b}.tif (or *_{b}.tif) band file{jp2}")
            bands.append(BandWindows(hits[0]))
    elif p.is_file():
        bands = [BandWindows(p, band=i) for i in range(4)]
    else:
        raise DataError(f"{p}: scene not found")
    shapes = {(b.height, b.width) for b in bands}
    if len(shapes) != 1:
        raise DataError(f"{p}: bands have different sizes {sorted(shapes)}")
    return bands


def _positions(n: int, tile: int, stride: int) -> List[int]:
    if n <= tile:
        return [0]
    pos = list(range(0, n - tile, stride))
    return pos + [n - tile]


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weight: rises linearly over ``overlap`` pixels at both ends, never reaches 0."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        r = (np.arange(min(overlap, n // 2), dtype=np.float32) + 1) / (overlap + 1)
        w[:len(r)] = r
        w[n - len(r):] = r[::-1]
    return w


def predict_scene(scene: os.PathLike | str, out: os.PathLike | str, predict: Callable[[np.ndarray], np.ndarray],
                  tile: int = 512, overlap: int = 64, batch_size: int = 4, threshold: float = DEFAULT_THRESHOLD,
                  progress: bool = True) -> dict:
    """Write the scene's cloud mask to ``out``; ``predict`` maps a normalised (N, 4, h, w) float32 batch to
    (N, 1, h, w) logits. The blended logits go through the one prediction rule (``threshold``, nodata pixels
    clear). Returns the scene size, tiles and seconds."""
    import time

    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    bands = open_scene(scene)
    h, w = bands[0].height, bands[0].width
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _positions(h, th, th - overlap), _positions(w, tw, tw - overlap)
    wy, wx = _ramp(th, overlap), _ramp(tw, overlap)
    weight = wy[:, None] * wx[None, :]
    geo = bands[0].geo_extratags()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ys) * len(xs), desc="scene tiles", unit="tile")

    def strips() -> Iterator[np.ndarray]:
        acc = np.zeros((th, w), np.float32)  # weighted logits of rows [base, base + th)
        wsum = np.zeros((th, w), np.float32)
        nodata = np.zeros((th, w), bool)
        base = 0
        pending = np.zeros((0, w), np.uint8)
        for i, y in enumerate(ys):
            if y > base:  # shift the accumulators: rows [base, y) are final
                k = y - base
                acc = np.concatenate([acc[k:], np.zeros((k, w), np.float32)])
                wsum = np.concatenate([wsum[k:], np.zeros((k, w), np.float32)])
                nodata = np.concatenate([nodata[k:], np.zeros((k, w), bool)])
                base = y
            dn = np.stack([b.rows(y, y + th) for b in bands])  # (4, th, W) as stored (uint16): the big buffer
            nodata[:] = nodata_mask(dn)
            for j in range(0, len(xs), batch_size):
                group = xs[j:j + batch_size]
                batch = np.stack([normalise(dn_to_reflectance(dn[:, :, x:x + tw])) for x in group])
                logits = np.asarray(predict(batch), np.float32)[:, 0]
                for x, z in zip(group, logits):
                    acc[:, x:x + tw] += z * weight
                    wsum[:, x:x + tw] += weight
                if bar is not None:
                    bar.update(len(group))
            nxt = ys[i + 1] if i + 1 < len(ys) else y + th
            done = nxt - y  # rows [y, nxt) receive no further tile
            blended = acc[:done] / np.maximum(wsum[:done], 1e-12)
            mask = masks_from_logits(blended[None, None], threshold, nodata[None, :done])[0]
            pending = np.concatenate([pending, mask])
            while len(pending) >= OUT_TILE:
                yield from _tiles(pending[:OUT_TILE])
                pending = pending[OUT_TILE:]
        if len(pending):
            yield from _tiles(pending)

    def _tiles(rows: np.ndarray) -> Iterator[np.ndarray]:
        """One row of output tiles, left to right, padded to OUT_TILE x OUT_TILE."""
        for x in range(0, w, OUT_TILE):
            t = np.zeros((OUT_TILE, OUT_TILE), np.uint8)
            part = rows[:, x:x + OUT_TILE]
            t[:part.shape[0], :part.shape[1]] = part
            yield t

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=h * w > 2 ** 31) as tw_:
            tw_.write(strips(), shape=(h, w), dtype=np.uint8, tile=(OUT_TILE, OUT_TILE), compression="zlib",
                      photometric="minisblack", extratags=geo, metadata=None)

    try:
        out = atomic_write(out, write)
    finally:
        for b in bands:
            b.close()
        if bar is not None:
            bar.close()
    return {"height": h, "width": w, "tiles": len(ys) * len(xs), "seconds": time.perf_counter() - t0,
            "out": str(out), "georeferenced": bool(geo)}


def torch_predictor(model, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from ..common.infer import predict_logits

    model = model.to(device).eval()
    return lambda b: predict_logits(model, torch.from_numpy(b).to(device)).float().cpu().numpy()


def onnx_predictor(path: os.PathLike | str, threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    from ..common.onnx import ort_logits, ort_session

    sess = ort_session(path, threads)
    return lambda b: ort_logits(sess, b)
