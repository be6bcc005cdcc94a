"""``cloudkd predict-scene``: a cloud mask for a whole raster (e.g. a 10980 x 10980 Sentinel-2 tile) in bounded
memory.

Input (:mod:`cloudkd.data.products`): a ``.SAFE`` product folder (L2A or L1C), a folder of per-band files in any
format GDAL reads (GeoTIFF, COG, JPEG 2000), or one multi-band file, read through rasterio window by window, with
the product's radiometry (reflectance = (DN + offset) / quantification value, from ``MTD_MSIL2A.xml`` /
``MTD_MSIL1C.xml``; plain GeoTIFF bands: DN / 10000).

Method: overlapping ``tile`` x ``tile`` windows (stride ``tile - overlap``) are predicted in batches; their
logits are blended with weights that ramp linearly over the overlap (so seams vanish) and the weighted mean goes
through the one prediction rule (threshold, dilation, no-data pixels clear) as one array: a row's mask is made once
the ``dilate`` rows below it are final too, so the dilation is the whole scene's, whatever the tiles. The scene is processed one row of tiles at a
time: only that row's input strip (4 x tile x W) and one accumulation strip are in memory, and GDAL's block
cache is capped to the blocks one strip touches (:func:`gdal_cache_bytes`); finished rows stream to a temporary
tiled GeoTIFF in bands of :data:`OUT_TILE` rows. Memory therefore grows with the scene's width but not with its
height.

Output: a Cloud-Optimised GeoTIFF, single-band uint8 mask (1 = cloud; 0 = clear or no data), tiled 512 x 512,
deflate-compressed, with overviews (mode) and the input's CRS and transform. Optionally the cloud probability
as a second COG (uint8 ``round(255 p)`` as the soft labels, 0 on no data; overviews averaged) and a chip report:
the On Cloud N grid of 512 x 512 chips (edge chips smaller) with each chip's cloud fraction, CSV. All outputs
appear together, only when the whole scene succeeded.
"""

from __future__ import annotations

import csv
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..common.io import atomic_write
from ..common.infer import (DEFAULT_DILATE, DEFAULT_THRESHOLD, check_dilate, clear_nodata, logit_threshold,
                            masks_from_above, probabilities_from_logits)
from ..data.normalise import normalise
from ..data.products import Scene, open_scene

#: output blocks, and the chip grid of the chip report: the On Cloud N chip size
OUT_TILE = 512
#: GDAL's block cache beyond what one strip of tiles needs (bytes)
CACHE_MARGIN = 8 * 2 ** 20
#: the chip report's columns
REPORT_COLUMNS = ("chip_id", "row", "col", "y", "x", "height", "width", "cloud_fraction", "nodata_fraction",
                  "cloud_fraction_of_valid", "left", "bottom", "right", "top")


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


class _StreamedCog:
    """A single-band uint8 raster received as successive bands of rows: a temporary tiled GeoTIFF beside ``dst``,
    which :meth:`finish` turns into a Cloud-Optimised GeoTIFF at ``dst`` (GDAL's COG driver: 512 x 512 tiles,
    deflate, overviews computed block by block)."""

    def __init__(self, dst: Path, scene: Scene, resampling: str, tags: Dict[str, str]):
        import rasterio

        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".stream.tif", dir=dst.parent)
        os.close(fd)
        self.tmp, self.dst, self.resampling, self.y = Path(tmp), dst, resampling, 0
        geo = dict(crs=scene.crs, transform=scene.transform) if scene.georeferenced else {}
        try:
            self.ds = rasterio.open(self.tmp, "w", driver="GTiff", height=scene.height, width=scene.width, count=1,
                                    dtype="uint8", tiled=True, blockxsize=OUT_TILE, blockysize=OUT_TILE,
                                    compress="deflate", BIGTIFF="IF_SAFER", **geo)
            self.ds.update_tags(**tags)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, rows: np.ndarray) -> None:
        from rasterio.windows import Window

        self.ds.write(rows[None], window=Window(0, self.y, rows.shape[1], rows.shape[0]))
        self.y += rows.shape[0]

    def finish(self) -> None:
        import rasterio.shutil

        self.ds.close()
        rasterio.shutil.copy(self.tmp, self.dst, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=OUT_TILE,
                             OVERVIEW_RESAMPLING=self.resampling, BIGTIFF="IF_SAFER")

    def discard(self) -> None:
        if not self.ds.closed:
            self.ds.close()
        self.tmp.unlink(missing_ok=True)


def gdal_cache_bytes(scene: Scene, rows: int) -> int:
    """GDAL's block cache while ``scene`` is predicted ``rows`` rows at a time: the blocks a strip of ``rows``
    rows touches in each band (so that the next, overlapping strip finds them decoded), one row of output blocks
    for the mask and the probability, and a margin. It grows with the scene's width, never with its height
    (a 10980-wide product in 1024 x 1024 JPEG 2000 blocks: 4 bands x 2 x 11 blocks of 2 MiB, about 200 MB)."""
    total = CACHE_MARGIN + 2 * OUT_TILE * OUT_TILE * -(-scene.width // OUT_TILE)
    for b in scene.bands:
        bh, bw = b.block_shape
        total += ((rows - 1) // bh + 2) * bh * bw * -(-b.width // bw) * b.dtype.itemsize
    return int(total)


def _atomic_all(paths: Sequence[Path], write: Callable[[List[Path]], object]):
    """``write(temporary paths)`` for several outputs; they are renamed into place only when it succeeded."""
    if not paths:
        return write([])
    result = []
    atomic_write(paths[0], lambda tmp: result.append(_atomic_all(paths[1:], lambda rest: write([tmp, *rest]))))
    return result[0]


def chip_rows(mask: np.ndarray, nodata: np.ndarray, y0: int, transform=None) -> List[dict]:
    """The chip report's rows for one band of mask rows starting at scene row ``y0`` (at most OUT_TILE rows):
    each OUT_TILE-wide chip's cloud fraction (the downlink's :func:`chip_stats`), no-data fraction, cloud
    fraction of its valid pixels and, on a georeferenced grid, its bounds."""
    from .downlink import chip_stats

    out = []
    for x in range(0, mask.shape[1], OUT_TILE):
        m, nd = mask[:, x:x + OUT_TILE], nodata[:, x:x + OUT_TILE]
        st = chip_stats(m, f"r{y0}_c{x}")
        valid = st.pixels - int(nd.sum())
        row = {"chip_id": st.chip_id, "row": y0 // OUT_TILE, "col": x // OUT_TILE, "y": y0, "x": x,
               "height": m.shape[0], "width": m.shape[1], "cloud_fraction": st.cloud_pred / st.pixels,
               "nodata_fraction": float(nd.mean()),
               "cloud_fraction_of_valid": st.cloud_pred / valid if valid else None}
        if transform is not None:
            xy = [transform @ c for c in ((x, y0), (x + m.shape[1], y0), (x, y0 + m.shape[0]),
                                          (x + m.shape[1], y0 + m.shape[0]))]
            row.update(left=min(c[0] for c in xy), bottom=min(c[1] for c in xy), right=max(c[0] for c in xy),
                       top=max(c[1] for c in xy))
        out.append(row)
    return out


def predict_scene(scene: os.PathLike | str | Scene, out: os.PathLike | str,
                  predict: Callable[[np.ndarray], np.ndarray], tile: int = 512, overlap: int = 64,
                  batch_size: int = 4, threshold: float = DEFAULT_THRESHOLD, progress: bool = True,
                  prob_out: Optional[os.PathLike | str] = None, chip_report: Optional[os.PathLike | str] = None,
                  offset: Optional[float] = None, scale: Optional[float] = None,
                  tags: Optional[Dict[str, str]] = None, dilate: int = DEFAULT_DILATE) -> dict:
    """Write the scene's cloud mask to ``out`` (a COG); ``predict`` maps a normalised (N, 4, h, w) float32 batch to
    (N, 1, h, w) logits. The blended logits go through the one prediction rule (``threshold``, ``dilate`` pixels of
    dilation over the whole scene, no-data pixels clear). ``scene``: a path (opened with :func:`open_scene`, ``offset`` / ``scale`` as there) or an open
    :class:`Scene` (left open). ``prob_out``: also the cloud probability; ``chip_report``: the 512 x 512 chip grid's
    cloud fractions (CSV); ``tags``: metadata written into the rasters. Returns the scene size, tiles, seconds
    (and their split between reading, the model and writing) and the area in km² where the grid is in metres."""
    import time

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from ..data.soft import quantise

    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    cut, dilate = logit_threshold(threshold), check_dilate(dilate)
    outputs = [Path(out)] + [Path(q) for q in (prob_out, chip_report) if q is not None]
    if len({q.absolute() for q in outputs}) != len(outputs):
        raise ValueError(f"the outputs must be different files, got {[str(q) for q in outputs]}")
    own = not isinstance(scene, Scene)
    sc = open_scene(scene, offset=offset, scale=scale) if own else scene
    h, w = sc.height, sc.width
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _positions(h, th, th - overlap), _positions(w, tw, tw - overlap)
    wy, wx = _ramp(th, overlap), _ramp(tw, overlap)
    weight = wy[:, None] * wx[None, :]
    tags = {"CLOUDKD_THRESHOLD": f"{threshold:g}", "CLOUDKD_DILATE": str(dilate),
            "CLOUDKD_RADIOMETRY": sc.radiometry.describe(), **(tags or {})}
    t0 = time.perf_counter()
    clock = {"read": 0.0, "model": 0.0, "write": 0.0}
    chips: List[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ys) * len(xs), desc="scene tiles", unit="tile")

    def run(tmps: List[Path]) -> None:
        mask_out = _StreamedCog(tmps[0], sc, "MODE", {"CLOUDKD_MASK": "1 = cloud, 0 = clear or no data", **tags})
        prob_sink = None
        try:
            if prob_out is not None:
                prob_sink = _StreamedCog(tmps[1], sc, "AVERAGE", {"CLOUDKD_PROBABILITY": "cloud probability "
                                                                  "round(255 p), 0 on no data", **tags})
            rows(mask_out, prob_sink)
            t = time.perf_counter()
            for sink in (mask_out, prob_sink):
                if sink is not None:
                    sink.finish()
            clock["write"] += time.perf_counter() - t
        finally:
            for sink in (mask_out, prob_sink):
                if sink is not None:
                    sink.discard()
        if chip_report is not None:
            with open(tmps[-1], "w", newline="") as f:
                wr = csv.DictWriter(f, REPORT_COLUMNS, extrasaction="ignore")
                wr.writeheader()
                wr.writerows(chips)

    def rows(mask_out: _StreamedCog, prob_sink: Optional[_StreamedCog]) -> None:
        acc = np.zeros((th, w), np.float32)  # weighted logits of rows [base, base + th)
        wsum = np.zeros((th, w), np.float32)
        nodata = np.zeros((th, w), bool)
        base = 0
        pend_mask, pend_prob, pend_nodata = np.zeros((0, w), np.uint8), np.zeros((0, w), np.uint8), \
            np.zeros((0, w), bool)
        # final rows above the threshold whose mask waits for the ``dilate`` rows below them (and their nodata), and
        # the last ``dilate`` above-threshold rows already masked (what the dilation reaches from above)
        wait_above, wait_nodata, above_ctx = np.zeros((0, w), bool), np.zeros((0, w), bool), np.zeros((0, w), bool)
        done_rows = 0

        def emit(n: int) -> None:  # the first n pending rows (a full band of OUT_TILE rows, or the last one)
            nonlocal pend_mask, pend_prob, pend_nodata, done_rows
            t = time.perf_counter()
            mask_out.write(pend_mask[:n])
            if prob_sink is not None:
                prob_sink.write(pend_prob[:n])
            if chip_report is not None:
                chips.extend(chip_rows(pend_mask[:n], pend_nodata[:n], done_rows,
                                       sc.transform if sc.georeferenced else None))
            pend_mask, pend_prob, pend_nodata = pend_mask[n:], pend_prob[n:], pend_nodata[n:]
            done_rows += n
            clock["write"] += time.perf_counter() - t

        for i, y in enumerate(ys):
            if y > base:  # shift the accumulators: rows [base, y) are final
                k = y - base
                acc = np.concatenate([acc[k:], np.zeros((k, w), np.float32)])
                wsum = np.concatenate([wsum[k:], np.zeros((k, w), np.float32)])
                nodata = np.concatenate([nodata[k:], np.zeros((k, w), bool)])
                base = y
            t = time.perf_counter()
            dn = sc.rows(y, y + th)  # (4, th, W) as stored (e.g. uint16): the big buffer
            nodata[:] = sc.nodata(dn)
            clock["read"] += time.perf_counter() - t
            for j in range(0, len(xs), batch_size):
                group = xs[j:j + batch_size]
                t = time.perf_counter()
                batch = np.stack([normalise(sc.reflectance(dn[:, :, x:x + tw])) for x in group])
                logits = np.asarray(predict(batch), np.float32)[:, 0]
                clock["model"] += time.perf_counter() - t
                for x, z in zip(group, logits):
                    acc[:, x:x + tw] += z * weight
                    wsum[:, x:x + tw] += weight
                if bar is not None:
                    bar.update(len(group))
            nxt = ys[i + 1] if i + 1 < len(ys) else y + th
            done = nxt - y  # rows [y, nxt) receive no further tile
            blended = acc[:done] / np.maximum(wsum[:done], 1e-12)
            wait_above = np.concatenate([wait_above, blended > cut])
            wait_nodata = np.concatenate([wait_nodata, nodata[:done]])
            ready = len(wait_above) if i + 1 == len(ys) else max(0, len(wait_above) - dilate)
            if ready:
                rows_ = np.concatenate([above_ctx, wait_above])
                mask = clear_nodata(masks_from_above(rows_, None, dilate)[len(above_ctx):len(above_ctx) + ready],
                                    wait_nodata[:ready])
                above_ctx = rows_[max(0, len(above_ctx) + ready - dilate):len(above_ctx) + ready]
                pend_mask = np.concatenate([pend_mask, mask])
                pend_nodata = np.concatenate([pend_nodata, wait_nodata[:ready]])
                wait_above, wait_nodata = wait_above[ready:], wait_nodata[ready:]
            if prob_sink is not None:
                prob = quantise(probabilities_from_logits(blended))
                prob[nodata[:done]] = 0
                pend_prob = np.concatenate([pend_prob, prob])
            while len(pend_mask) >= OUT_TILE:
                emit(OUT_TILE)
        if len(pend_mask):
            emit(len(pend_mask))

    try:
        with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(sc, th)), warnings.catch_warnings():  # bytes, for rasterio
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _atomic_all(outputs, run)
    finally:
        if own:
            sc.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    px = sc.pixel_km2()
    result = {"height": h, "width": w, "tiles": len(ys) * len(xs), "seconds": seconds,
              "seconds_read": clock["read"], "seconds_model": clock["model"], "seconds_write": clock["write"],
              "out": str(out), "georeferenced": sc.georeferenced, "km2": None if px is None else px * h * w,
              "radiometry": sc.radiometry.describe(), "warnings": list(sc.warnings)}
    if prob_out is not None:
        result["prob_out"] = str(prob_out)
    if chip_report is not None:
        result.update(chip_report=str(chip_report), n_chips=len(chips),
                      mean_cloud_fraction=float(np.mean([c["cloud_fraction"] for c in chips])))
    return result


def torch_predictor(model, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from ..common.infer import predict_logits

    model = model.to(device).eval()
    return lambda b: predict_logits(model, torch.from_numpy(b).to(device)).float().cpu().numpy()


def onnx_predictor(path: os.PathLike | str, threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    from ..student.predictor import load_predictor

    return load_predictor(path, threads, kind="onnx").numpy_logits


def load_predictor(model: os.PathLike | str, threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    """The ``predict`` of :func:`predict_scene` for a model (:func:`cloudkd.student.predictor.load_predictor`: an
    exported ``.onnx`` model on ONNX Runtime, a student run folder / checkpoint or an nnU-Net work folder on
    PyTorch, on ``threads``)."""
    from ..student.predictor import load_predictor as load

    return load(model, threads).numpy_logits
