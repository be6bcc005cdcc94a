"""cloudkd submission for the On Cloud N runtime: one cloud mask per chip, with the packed student.

The runtime unzips submission.zip into /codeexecution and runs ``python main.py`` with no arguments. This script
reads every chip folder of ``data/test_features`` (B02, B03, B04, B08 GeoTIFFs) and writes
``predictions/{chip_id}.tif`` (single band, uint8 0/1, uncompressed, chip size) and nothing else.

* Root: ``/codeexecution`` unless the environment variable ``CLOUDKD_ROOT`` says otherwise (local runs, the
  emulator ``cloudkd runtime-test``). Assets are read from ``assets/`` next to this file.
* Needs Python >= 3.9, torch >= 1.8, numpy, tifffile, pillow. The model code (``assets/cloudkd_rt/unet.py``),
  the normalisation and band scaling (``normalise.py``) and the prediction rule (``infer.py``) are copies of
  the cloudkd library's own modules, written by ``cloudkd pack``; ``assets/config.json`` holds the model
  spec, the prediction rule's threshold and dilation (pixels; 0 when absent), flip TTA and batch size;
  ``assets/model.pt`` the weights (a plain state dict).
* Never fails the run for one chip. Fallbacks (each logged with the chip id and the reason):
    - a band that is missing, unreadable, empty, not 2-D or not chip-size x chip-size is replaced by the mean
      reflectance of the chip's good bands (size, dims and dtype are checked from the TIFF header, so a wrong
      band is never decoded);
    - a chip with no good band gets an all-clear mask (0): nothing is thrown away on a guess;
    - NaN / infinite values are treated as nodata (0);
    - nodata pixels (all four bands 0) are clear (0); an all-nodata chip gets an all-clear mask without
      running the model;
    - if the model fails on a batch, its chips are retried one by one; a chip that still fails gets an
      all-clear mask.
  Each output is written to a temporary file outside ``predictions/`` and renamed into place, so an
  interrupted run leaves no partial file. The exit code is non-zero only if some chip could not be written.
* At the end, one machine-readable line in the log (stdout): ``cloudkd-summary `` followed by a JSON object
  with ``chips_expected``, ``chips_written``, ``fallback`` ({chip_id: why} of every chip given one of the
  fallbacks above), ``failed`` ({chip_id: why} of every chip whose mask could not be written), ``threshold``,
  ``dilate``, ``tta``, ``model``, ``assets`` (sha256 of ``model.pt`` and ``config.json``), ``device``, ``torch`` and
  ``seconds``. ``cloudkd runtime-test`` reads its verdict from this line, not from the wording of the others.
"""

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("CLOUDKD_ROOT", "/codeexecution"))
ASSETS = HERE / "assets"
FEATURES = ROOT / "data" / "test_features"
PREDICTIONS = ROOT / "predictions"

sys.path.insert(0, str(ASSETS))

import torch  # noqa: E402

from cloudkd_rt import infer, normalise, unet  # noqa: E402

log = logging.getLogger("cloudkd.main")
#: the start of the one log message that holds the run summary as JSON (read by ``cloudkd runtime-test``)
SUMMARY_PREFIX = "cloudkd-summary "


def load_config():
    with open(ASSETS / "config.json") as f:
        return json.load(f)


def build_model(spec):
    """The network described by config['model'] ({'arch': 'compact_unet', 'kwargs': ...} or an smp model)."""
    if spec["arch"] == "compact_unet":
        return unet.CompactUNet(**spec["kwargs"])
    if spec["arch"] == "smp":
        import segmentation_models_pytorch as smp

        kwargs = dict(spec.get("kwargs", {}))
        kwargs["encoder_weights"] = None
        return getattr(smp, spec["name"])(spec["encoder"], in_channels=4, classes=1, **kwargs)
    raise ValueError("unknown model arch %r in config.json" % (spec["arch"],))


def load_model(cfg, device):
    model = build_model(cfg["model"])
    state = torch.load(str(ASSETS / "model.pt"), map_location="cpu")
    model.load_state_dict(state)
    return model.to(device).eval()


def list_chips():
    """Chip ids: every folder of test_features whose name does not start with '.', sorted."""
    return sorted(p.name for p in FEATURES.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_band(path, size):
    """(reflectance float32 (size, size), problem or None)."""
    if not path.is_file():
        return None, "missing"
    try:
        import tifffile

        # the header first: a band of the wrong size, dims or dtype is refused before anything is decoded (a
        # small compressed file can hold a huge raster)
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0] if tif.series else tif.pages[0]
            shape = tuple(int(d) for d in series.shape if int(d) != 1)
            dtype = series.dtype
            if dtype is None or np.dtype(dtype).kind not in "uif":
                return None, "unsupported dtype %s" % dtype
            if shape != (size, size):
                return None, "wrong shape %s (expected %s); not decoded" % (shape, (size, size))
            dn = tif.asarray()
    except Exception as exc:  # corrupt, empty, not a TIFF
        return None, "unreadable (%s)" % (str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__)
    dn = np.squeeze(np.asarray(dn))
    if dn.dtype.kind not in "uif":
        return None, "unsupported dtype %s" % dn.dtype
    if dn.shape != (size, size):
        return None, "wrong shape %s (expected %s)" % (dn.shape, (size, size))
    refl = normalise.dn_to_reflectance(dn)
    bad = ~np.isfinite(refl)
    if bad.any():
        refl[bad] = 0.0
        return refl, "%d NaN/inf values set to nodata" % int(bad.sum())
    return refl, None


def read_chip(chip_id, size):
    """(reflectance (4, size, size) or None, list of problems). Never raises."""
    problems, bands = [], []
    for name in normalise.BANDS:
        refl, problem = read_band(FEATURES / chip_id / (name + ".tif"), size)
        if problem:
            problems.append("%s.tif: %s" % (name, problem))
        bands.append(refl)
    good = [b for b in bands if b is not None]
    if not good:
        return None, problems
    if len(good) < len(bands):
        fill = np.mean(good, axis=0).astype(np.float32)
        bands = [fill if b is None else b for b in bands]
        problems.append("missing bands filled with the mean of the %d good band(s)" % len(good))
    return np.stack(bands), problems


def write_mask(chip_id, mask, tmp_dir):
    """Atomically write predictions/{chip_id}.tif (uint8 0/1, uncompressed TIFF)."""
    from PIL import Image

    fd, tmp = tempfile.mkstemp(prefix=chip_id + ".", suffix=".tif", dir=str(tmp_dir))
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(tmp, format="TIFF")
        os.replace(tmp, str(PREDICTIONS / (chip_id + ".tif")))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256(path):
    """The hex sha256 of a file, or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(str(path), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def predict_batch(model, chips, cfg, device):
    """Masks for a list of (4, H, W) reflectance arrays: the library's normalisation and prediction rule (its
    dilation and nodata pixels clear included)."""
    refl = np.stack(chips)
    x = torch.from_numpy(np.stack([normalise.normalise(c) for c in chips])).to(device)
    return infer.predict_masks(model, x, infer.nodata_mask(refl), float(cfg.get("threshold", infer.DEFAULT_THRESHOLD)),
                               bool(cfg.get("tta", False)), int(cfg.get("dilate", infer.DEFAULT_DILATE)))


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    t0 = time.time()
    cfg = load_config()
    size = int(cfg.get("chip_size", 512))
    batch_size = max(1, int(cfg.get("batch_size", 8)))
    threshold = float(cfg.get("threshold", infer.DEFAULT_THRESHOLD))
    dilate = int(cfg.get("dilate", infer.DEFAULT_DILATE))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_grad_enabled(False)
    model = load_model(cfg, device)
    chips = list_chips()
    PREDICTIONS.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".cloudkd-tmp-", dir=str(ROOT)))
    model_name = cfg["model"].get("name", cfg["model"]["arch"])
    log.info("%d chips in %s; model %s on %s; threshold %s, dilate %d px, tta %s, batch %d", len(chips), FEATURES,
             model_name, device, threshold, dilate, cfg.get("tta", False), batch_size)
    fallback, failed = {}, {}  # chip_id -> why: the chips given a fallback mask / whose mask was not written
    n_written = 0

    def give_fallback(chip_id, why):
        fallback[chip_id] = fallback[chip_id] + "; " + why if chip_id in fallback else why

    def emit(chip_id, mask):
        nonlocal n_written
        try:
            write_mask(chip_id, mask, tmp_dir)
        except Exception as exc:
            failed[chip_id] = "could not write the mask: %s" % exc
            log.error("%s: %s", chip_id, failed[chip_id])
        else:
            n_written += 1

    pending = []  # (chip_id, reflectance)

    def flush():
        if not pending:
            return
        try:
            masks = predict_batch(model, [p[1] for p in pending], cfg, device)
        except Exception as exc:
            log.warning("batch of %d chips failed (%s); retrying one by one", len(pending), exc)
            masks = []
            for chip_id, refl in pending:
                try:
                    masks.append(predict_batch(model, [refl], cfg, device)[0])
                except Exception as exc1:
                    give_fallback(chip_id, "model failed (%s); all-clear mask" % exc1)
                    log.warning("%s: model failed (%s); all-clear mask", chip_id, exc1)
                    masks.append(np.zeros(refl.shape[1:], np.uint8))
        for (chip_id, _), mask in zip(pending, masks):
            emit(chip_id, mask)
        del pending[:]

    for i, chip_id in enumerate(chips):
        try:
            refl, problems = read_chip(chip_id, size)
        except Exception as exc:  # belt and braces: read_chip is not meant to raise
            refl, problems = None, ["unexpected error %s" % exc]
        if problems:
            log.warning("%s: %s", chip_id, "; ".join(problems))
            give_fallback(chip_id, "; ".join(problems))
        if refl is None:
            give_fallback(chip_id, "no readable band; all-clear mask")
            log.warning("%s: no readable band; all-clear mask", chip_id)
            emit(chip_id, np.zeros((size, size), np.uint8))
            continue
        if infer.nodata_mask(refl).all():
            give_fallback(chip_id, "all pixels are nodata; all-clear mask")
            log.warning("%s: all pixels are nodata; all-clear mask", chip_id)
            emit(chip_id, np.zeros((size, size), np.uint8))
            continue
        pending.append((chip_id, refl))
        if len(pending) >= batch_size:
            flush()
        if (i + 1) % 500 == 0:
            log.info("%d / %d chips, %.1f s", i + 1, len(chips), time.time() - t0)
    flush()
    try:
        os.rmdir(str(tmp_dir))
    except OSError:
        pass
    seconds = time.time() - t0
    log.info("done: %d masks for %d chips (%d with a fallback, %d failed) in %.1f s (%.1f ms/chip)",
             n_written, len(chips), len(fallback), len(failed), seconds, 1000 * seconds / max(1, len(chips)))
    summary = {"chips_expected": len(chips), "chips_written": n_written, "fallback": fallback, "failed": failed,
               "threshold": threshold, "dilate": dilate, "tta": bool(cfg.get("tta", False)), "model": model_name,
               "assets": {name: sha256(ASSETS / name) for name in ("model.pt", "config.json")},
               "device": device, "torch": torch.__version__, "seconds": round(seconds, 3)}
    log.info("%s%s", SUMMARY_PREFIX, json.dumps(summary, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
