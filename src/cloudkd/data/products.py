"""Whole Sentinel-2 products as scenes: which files hold B02/B03/B04/B08, and how their digital numbers become
reflectance. Every read goes through rasterio (GDAL), window by window.

Accepted inputs (:func:`open_scene`):

* a ``.SAFE`` folder, L2A (``GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2`` ...) or L1C (``GRANULE/*/IMG_DATA/*_B02.jp2``
  ...), its band files found through the product's ``manifest.safe`` (every file of the product is listed
  there) and the products' naming; without a manifest, by that naming under ``GRANULE``;
* a folder of per-band files in any format GDAL reads (GeoTIFF, Cloud-Optimised GeoTIFF, JPEG 2000, VRT ...),
  named ``B02.*`` or ``*_B02.*`` / ``*_B02_*.*`` (e.g. a product's ``IMG_DATA/R10m`` folder);
* one multi-band file: bands described as B02, B03, B04, B08 when it says so, else its first four bands.

Radiometry (:class:`Radiometry`): reflectance = (DN + offset) / quantification value, with the values of the
product's metadata, ``MTD_MSIL2A.xml`` (``BOA_QUANTIFICATION_VALUE``, ``BOA_ADD_OFFSET`` per ``band_id``) or
``MTD_MSIL1C.xml`` (``QUANTIFICATION_VALUE``, ``RADIO_ADD_OFFSET``), found at the root of a ``.SAFE`` folder, in a
band folder, or at the root of the product a band folder lies in (``<product>/GRANULE/...``). Products of
processing baseline 04.00 and later (since 25 January 2022) carry an offset of -1000: read as DN / 10000 they
come out 0.1 too bright, which pushes bright ground towards cloud. No data is the product's NODATA special value
(0) in every band. Without product metadata:

* explicit ``offset`` / ``scale`` (``--offset`` / ``--scale``) are used; they also override the metadata;
* a band file's own GDAL scale / offset, when it declares one (reflectance = DN * scale + offset);
* input that looks like a product (a ``.SAFE`` folder, JPEG 2000 bands, bands named like a product's) is refused:
  its offset cannot be guessed;
* plain GeoTIFF bands are read as before, DN / 10000 (the On Cloud N chips), no data 0 (or the files' own
  no-data value);
* bands of floating-point values are refused: floats are most often reflectance already (0 .. 1.5), which read
  as DN / 10000 would be 10000 times too dark; give ``--scale 1`` for reflectance (``--scale 10000`` for digital
  numbers stored as floats).

NaN and infinite values are no data (the rule ``submission/main.py`` applies to chips): they read as the no-data
value, so a pixel with no finite value in any band is no data (clear in the mask, counted in the chip report's
``nodata_fraction``), never a valid pixel.

An L1C product is read (top-of-atmosphere reflectance) with a warning: the models were trained on L2A surface
reflectance.
"""

from __future__ import annotations

import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..common.errors import DataError
from ..common.infer import nodata_mask
from .normalise import BANDS, SCALE, dn_to_reflectance

#: Sentinel-2's band_id of each of the model's bands (the MTD's Spectral_Information: B1 = 0, B2 = 1 ... B8 = 7)
BAND_IDS = {"B02": 1, "B03": 2, "B04": 3, "B08": 7}
#: the processing baseline from which products carry a radiometric offset (25 January 2022)
OFFSET_BASELINE = 4.0
#: the products' metadata files, by level
MTD_NAMES = {"L2A": "MTD_MSIL2A.xml", "L1C": "MTD_MSIL1C.xml"}
#: file names that are never band files
_NOT_BANDS = re.compile(r"(\.aux\.xml|\.ovr|\.msk|\.xml|\.json|\.txt|\.csv|\.md)$", re.IGNORECASE)
#: a band file named like a product's (T32TQM_20220601T102559_B02[_10m])
_PRODUCT_NAME = re.compile(r"T\d{2}[A-Z]{3}_(\d{8})T\d{6}_B\d")

L1C_WARNING = ("{path}: an L1C product (top-of-atmosphere reflectance); the models were trained on L2A surface "
               "reflectance (bottom of atmosphere), so haze and thin cloud read brighter and masks may show more "
               "cloud: use the L2A product where there is one")


class ProductWarning(UserWarning):
    """A product that can be read, but not the way the models were trained (e.g. L1C instead of L2A)."""


class BandWindows:
    """Row windows of one band of any raster GDAL reads, read window by window (bounded memory)."""

    def __init__(self, path: os.PathLike | str, band: Optional[int] = None):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError

        self.path = Path(path)
        try:
            with warnings.catch_warnings():  # plain TIFFs (the On Cloud N chips) carry no georeferencing
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.path)
        except (RasterioError, OSError) as exc:
            raise DataError(f"{self.path}: not a raster GDAL can read ({exc})") from None
        count = self.ds.count
        if band is None and count != 1:
            self.ds.close()
            raise DataError(f"{self.path}: has {count} bands; a band file must have one")
        if band is not None and not 0 <= band < count:
            self.ds.close()
            raise DataError(f"{self.path}: has {count} band(s); band {band + 1} not available")
        self.band = band
        self.index = (band or 0) + 1  # GDAL counts bands from 1
        self.height, self.width = self.ds.height, self.ds.width
        self.dtype = np.dtype(self.ds.dtypes[self.index - 1])
        if self.dtype.kind not in "uif":
            self.ds.close()
            raise DataError(f"{self.path}: band {self.index} holds {self.dtype} values, not numbers")
        self.crs, self.transform = self.ds.crs, self.ds.transform
        self.block_shape = self.ds.block_shapes[self.index - 1]  # (rows, columns) GDAL reads and caches at once
        self.gdal_scale = self.ds.scales[self.index - 1]
        self.gdal_offset = self.ds.offsets[self.index - 1]
        self.nodata = self.ds.nodatavals[self.index - 1]
        self.description = self.ds.descriptions[self.index - 1]

    def close(self) -> None:
        self.ds.close()

    def rows(self, y0: int, y1: int, indexes: Optional[Sequence[int]] = None) -> np.ndarray:
        """Rows [y0, y1) of the band, (y1 - y0, W); or of the bands ``indexes`` (GDAL's, from 1) of its file, in
        one read, (len(indexes), y1 - y0, W)."""
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        try:
            return self.ds.read(self.index if indexes is None else list(indexes),
                                window=Window(0, y0, self.width, y1 - y0))
        except (RasterioError, OSError) as exc:
            why = exc.__cause__ or exc  # rasterio's "Read failed": GDAL's own words are in the cause
            raise DataError(f"{self.path}: rows {y0}-{y1} cannot be read ({why})") from None

    def grid(self) -> str:
        t = self.transform
        geo = f" of {abs(t.a):g} x {abs(t.e):g} from ({t.c:g}, {t.f:g}) in {self.crs}" if self.crs else ""
        return f"{self.width}x{self.height} pixels{geo}"


@dataclass
class Radiometry:
    """reflectance = (DN + offsets[band]) / scale; no data where every band holds ``nodata``."""
    scale: float = SCALE
    offsets: Tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    nodata: float = 0
    source: str = "DN / 10000, as the On Cloud N chips"
    level: Optional[str] = None  # L2A, L1C (from product metadata)
    baseline: Optional[str] = None

    def describe(self) -> str:
        offs = sorted(set(self.offsets))
        if len(offs) == 1:
            dn = "DN" if offs[0] == 0 else f"(DN {'-' if offs[0] < 0 else '+'} {abs(offs[0]):g})"
        else:
            dn = "(DN + " + "/".join(f"{o:g}" for o in self.offsets) + f" for {'/'.join(BANDS)})"
        return f"reflectance = {dn} / {self.scale:g} ({self.source}); no data: DN {self.nodata:g} in every band"


# ----------------------------------------------------------------------------------------------- product metadata
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _number(path: Path, what: str, text: Optional[str]) -> float:
    try:
        v = float((text or "").strip())
    except ValueError:
        raise DataError(f"{path}: {what} is {text!r}, not a number") from None
    if not np.isfinite(v):
        raise DataError(f"{path}: {what} is {text!r}, not a finite number")
    return v


def read_product_metadata(path: os.PathLike | str) -> Radiometry:
    """The radiometry of an ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``: quantification value, the offsets of B02,
    B03, B04, B08 (0 before baseline 04.00, when there are none), NODATA, level and baseline."""
    path = Path(path)
    level = "L1C" if "1C" in path.name.upper() else "L2A"
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: unreadable product metadata ({exc})") from None
    kind = _local(root.tag)
    if "Level-1C" in kind:
        level = "L1C"
    elif "Level-2A" in kind:
        level = "L2A"
    elif "User_Product" not in kind:
        raise DataError(f"{path}: not Sentinel-2 product metadata (root element {kind!r})")
    quant_tags = ("QUANTIFICATION_VALUE",) if level == "L1C" else ("BOA_QUANTIFICATION_VALUE",
                                                                   "L2A_BOA_QUANTIFICATION_VALUE")
    offset_tag = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
    quant, baseline, nodata, offsets, physical = None, None, None, {}, {}
    for el in root.iter():
        name = _local(el.tag)
        if name in quant_tags and quant is None:
            quant = _number(path, name, el.text)
        elif name == "PROCESSING_BASELINE" and baseline is None:
            baseline = (el.text or "").strip()
        elif name == offset_tag:
            bid = el.get("band_id")
            if bid is None or not bid.strip().isdigit():
                raise DataError(f"{path}: {offset_tag} without a band_id")
            offsets[int(bid)] = _number(path, f"{offset_tag} of band_id {bid}", el.text)
        elif name == "Special_Values":
            kv = {_local(c.tag): (c.text or "").strip() for c in el}
            if kv.get("SPECIAL_VALUE_TEXT", "").upper() == "NODATA":
                nodata = _number(path, "the NODATA special value", kv.get("SPECIAL_VALUE_INDEX"))
        elif name == "Spectral_Information" and el.get("bandId", "").isdigit():
            m = re.fullmatch(r"B(\d+)(A?)", el.get("physicalBand", ""))
            if m:
                physical[f"B{int(m.group(1)):02d}{m.group(2)}"] = int(el.get("bandId"))
    if quant is None:
        raise DataError(f"{path}: unreadable product metadata (no {quant_tags[0]})")
    if quant <= 0:
        raise DataError(f"{path}: {quant_tags[0]} is {quant:g}; it must be positive")
    ids = {b: physical.get(b, BAND_IDS[b]) for b in BANDS}
    try:
        major = float(baseline) if baseline else None
    except ValueError:
        raise DataError(f"{path}: PROCESSING_BASELINE is {baseline!r}, not a baseline like 04.00") from None
    if offsets:
        missing = [b for b in BANDS if ids[b] not in offsets]
        if missing:
            raise DataError(f"{path}: no {offset_tag} for band(s) {', '.join(missing)}")
        offs = tuple(offsets[ids[b]] for b in BANDS)
    elif major is not None and major >= OFFSET_BASELINE:
        raise DataError(f"{path}: processing baseline {baseline} but no {offset_tag} values (products of baseline "
                        f"04.00 and later carry them)")
    else:
        offs = (0.0,) * 4
    where = f"{path.name}, baseline {baseline}" if baseline else path.name
    return Radiometry(scale=quant, offsets=offs, nodata=0 if nodata is None else nodata, source=where, level=level,
                      baseline=baseline)


# ---------------------------------------------------------------------------------------------------- band files
def _is_safe(p: Path) -> bool:
    return p.is_dir() and (p.name.upper().endswith(".SAFE") or (p / "manifest.safe").is_file()
                           or (p / "GRANULE").is_dir())


def _product_root(p: Path) -> Optional[Path]:
    """The product folder when ``p`` lies inside its ``GRANULE`` folder."""
    for parent in p.absolute().parents:
        if parent.name == "GRANULE":
            return parent.parent
    return None


def _find_mtd(folder: Path) -> Optional[Path]:
    hits = [folder / n for n in MTD_NAMES.values() if (folder / n).is_file()]
    if len(hits) > 1:
        raise DataError(f"{folder}: holds both {hits[0].name} and {hits[1].name}; which level is it?")
    return hits[0] if hits else None


def _manifest_files(manifest: Path) -> List[str]:
    try:
        root = ET.parse(manifest).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{manifest}: unreadable product manifest ({exc})") from None
    return [el.get("href") for el in root.iter() if _local(el.tag) == "fileLocation" and el.get("href")]


def safe_band_files(safe: Path) -> List[Path]:
    """B02, B03, B04, B08 of a ``.SAFE`` folder: the 10 m JPEG 2000 files its manifest lists (L2A:
    ``IMG_DATA/R10m/*_B02_10m.jp2``, L1C: ``IMG_DATA/*_B02.jp2``); without a manifest, found under ``GRANULE``."""
    manifest = safe / "manifest.safe"
    if manifest.is_file():
        names = [h[2:] if h.startswith("./") else h for h in _manifest_files(manifest)]
        listed = f"{manifest} lists"
    else:
        names = [str(p.relative_to(safe)) for p in sorted((safe / "GRANULE").glob("*/IMG_DATA/**/*.jp2"))]
        listed = f"{safe} (no manifest.safe) holds"
    out = []
    for b in BANDS:
        pats = (re.compile(rf"(^|/)GRANULE/[^/]+/IMG_DATA/R10m/[^/]*_{b}_10m\.jp2$"),  # L2A
                re.compile(rf"(^|/)GRANULE/[^/]+/IMG_DATA/[^/]*_{b}\.jp2$"))  # L1C
        hits = next(([n for n in names if pat.search(n)] for pat in pats if any(pat.search(n) for n in names)), [])
        if not hits:
            raise DataError(f"{listed} no {b} band file (GRANULE/*/IMG_DATA/R10m/*_{b}_10m.jp2 or "
                            f"GRANULE/*/IMG_DATA/*_{b}.jp2)")
        if len(hits) > 1:
            raise DataError(f"{listed} several {b} band files (one granule expected): {', '.join(hits)}")
        f = safe / hits[0]
        if not f.is_file():
            raise DataError(f"{f}: band file listed in {manifest.name} is missing")
        out.append(f)
    return out


def folder_band_files(folder: Path) -> List[Path]:
    """B02, B03, B04, B08 of a folder of per-band files: ``B02.*`` first, else ``*_B02.*`` / ``*_B02_*.*`` (a
    ``_10m`` file wins over other resolutions)."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")
             and not _NOT_BANDS.search(f.name)]
    out = []
    for b in BANDS:
        stem = lambda f: f.name.split(".", 1)[0]  # noqa: E731
        hits = [f for f in files if stem(f) == b] or \
               [f for f in files if re.search(rf"(^|_){b}(_|$)", stem(f))]
        if len(hits) > 1:
            tenm = [f for f in hits if re.search(rf"_{b}_10m$", stem(f))]
            hits = tenm if len(tenm) == 1 else hits
        if not hits:
            raise DataError(f"{folder}: no {b} band file ({b}.tif, *_{b}.tif, *_{b}_10m.jp2 ...)")
        if len(hits) > 1:
            raise DataError(f"{folder}: several {b} band files: {', '.join(f.name for f in hits)}")
        out.append(hits[0])
    return out


# ---------------------------------------------------------------------------------------------------------- scene
@dataclass
class Scene:
    """The four bands of a scene, their common grid and their radiometry."""
    path: Path
    kind: str
    bands: List[BandWindows]
    radiometry: Radiometry
    warnings: List[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.bands[0].height

    @property
    def width(self) -> int:
        return self.bands[0].width

    @property
    def crs(self):
        return self.bands[0].crs

    @property
    def transform(self):
        return self.bands[0].transform

    @property
    def georeferenced(self) -> bool:
        from affine import Affine

        return self.crs is not None or self.transform != Affine.identity()

    def pixel_km2(self) -> Optional[float]:
        """Area of one pixel in km² (None unless the grid is in metres)."""
        if self.crs is None or not self.crs.is_projected or (self.crs.linear_units or "").lower() not in (
                "metre", "meter", "m"):
            return None
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d) / 1e6

    @property
    def nodata_value(self) -> float:
        """The digital number of no data: the radiometry's (0 where that is NaN, a float file's usual no-data)."""
        v = self.radiometry.nodata
        return v if v is not None and np.isfinite(v) else 0

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Digital numbers of rows [y0, y1), (4, y1 - y0, W), as stored, except that NaN and infinite values read as
        the no-data value (see the module docstring). The bands of one multi-band file come in one read, so a
        pixel-interleaved file's blocks are decoded once, not once per band."""
        first = self.bands[0]
        if all(b.path == first.path and b.dtype == first.dtype for b in self.bands[1:]):
            dn = first.rows(y0, y1, [b.index for b in self.bands])
        else:
            dn = np.stack([b.rows(y0, y1) for b in self.bands])
        if dn.dtype.kind == "f":
            bad = ~np.isfinite(dn)
            if bad.any():
                dn[bad] = self.nodata_value
        return dn

    def reflectance(self, dn: np.ndarray) -> np.ndarray:
        """float32 reflectance of digital numbers (4, h, w) of this scene (the project's one conversion)."""
        r = self.radiometry
        return dn_to_reflectance(dn, r.offsets, r.scale)

    def nodata(self, dn: np.ndarray) -> np.ndarray:
        """Boolean (h, w): no data in every band (the project's one rule, at the product's no-data value)."""
        return nodata_mask(dn, self.nodata_value)

    def describe(self) -> str:
        return f"{self.path}: {self.kind}, {self.width}x{self.height} pixels; {self.radiometry.describe()}"

    def close(self) -> None:
        for b in self.bands:
            b.close()


def _check_grids(bands: Sequence[BandWindows]) -> None:
    first = bands[0]
    for b in bands[1:]:
        if (b.height, b.width) != (first.height, first.width) or b.crs != first.crs or \
                not b.transform.almost_equals(first.transform):
            raise DataError(f"{b.path}: grid {b.grid()} differs from {first.path.name}'s {first.grid()} (all four "
                            f"bands must share one grid: use the 10 m files)")


def _open_bands(paths: Sequence[Path], indices: Sequence[Optional[int]]) -> List[BandWindows]:
    bands: List[BandWindows] = []
    try:
        for p, i in zip(paths, indices):
            bands.append(BandWindows(p, i))
        _check_grids(bands)
    except BaseException:
        for b in bands:
            b.close()
        raise
    return bands


def _explicit(offset: Optional[float], scale: Optional[float], nodata: float = 0) -> Radiometry:
    off = 0.0 if offset is None else float(offset)
    sc = SCALE if scale is None else float(scale)
    if not (np.isfinite(off) and np.isfinite(sc) and sc > 0):
        raise ValueError(f"offset must be finite and scale positive, got {offset} and {scale}")
    return Radiometry(scale=sc, offsets=(off,) * 4, nodata=nodata, source="--offset / --scale")


def _from_band_tags(bands: Sequence[BandWindows]) -> Optional[Radiometry]:
    """The files' own GDAL scale / offset (reflectance = DN * scale + offset), when they declare one."""
    tagged = [(b.gdal_scale or 1.0, b.gdal_offset or 0.0) for b in bands]
    if all(t == (1.0, 0.0) for t in tagged):
        return None
    scales = {s for s, _ in tagged}
    if len(scales) != 1 or next(iter(scales)) <= 0:
        raise DataError(f"{bands[0].path.parent}: the band files declare different or non-positive scales "
                        f"{[s for s, _ in tagged]}; give --offset and --scale")
    s = next(iter(scales))
    return Radiometry(scale=1.0 / s, offsets=tuple(o / s for _, o in tagged), source="the files' own scale/offset")


def _files_nodata(bands: Sequence[BandWindows]) -> float:
    vals = {b.nodata for b in bands}
    return next(iter(vals)) if len(vals) == 1 and None not in vals else 0


def _unknown_offset(p: Path, files: Sequence[Path]) -> Optional[str]:
    """Why ``p`` looks like a Sentinel-2 product whose offset cannot be known without its metadata."""
    if _is_safe(p):
        why = "a Sentinel-2 product folder"
    elif any(f.suffix.lower() in (".jp2", ".j2k") for f in files):
        why = "JPEG 2000 band files of a Sentinel-2 product"
    elif any(_PRODUCT_NAME.search(f.name) for f in files):
        why = "band files named like a Sentinel-2 product's"
    else:
        return None
    dates = [m.group(1) for m in (_PRODUCT_NAME.search(f.name) for f in files) if m]
    hint = ""
    if dates:
        d = dates[0]
        hint = (f" (acquired {d[:4]}-{d[4:6]}-{d[6:]}: " + ("after 25 January 2022, so most likely --offset -1000"
                if d >= "20220125" else "before 25 January 2022, so most likely --offset 0") + ")")
    return (f"{p}: {why} without its MTD_MSIL2A.xml / MTD_MSIL1C.xml, so its radiometric offset is unknown "
            f"(products of processing baseline 04.00 and later read DN - 1000); give --offset and --scale{hint}")


def open_scene(path: os.PathLike | str, offset: Optional[float] = None, scale: Optional[float] = None) -> Scene:
    """The four bands of a scene (a ``.SAFE`` folder, a folder of band files or one multi-band file) in the
    project's band order, checked to share one grid, with their radiometry (see the module docstring). Raises
    :class:`DataError` naming the file for anything missing, unreadable or inconsistent; warns
    (:class:`ProductWarning`) about L1C products."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: scene not found")
    if _is_safe(p):
        kind = "Sentinel-2 product"
        files, indices = safe_band_files(p), [None] * 4
        mtd = _find_mtd(p)
        if mtd is None and (p / "manifest.safe").is_file():
            hits = [h for h in _manifest_files(p / "manifest.safe") if re.search(r"MTD_MSIL(1C|2A)\.xml$", h)]
            mtd = p / hits[0] if hits else None
            if mtd is not None and not mtd.is_file():
                raise DataError(f"{mtd}: product metadata listed in manifest.safe is missing")
    elif p.is_dir():
        kind = "band files"
        files, indices = folder_band_files(p), [None] * 4
        root = _product_root(p)
        mtd = _find_mtd(p) or (_find_mtd(root) if root is not None else None)
    else:
        kind = "multi-band file"
        files, indices = [p] * 4, None
        root = _product_root(p)
        mtd = _find_mtd(p.parent) or (_find_mtd(root) if root is not None else None)
    if indices is None:  # one file: bands described as B02 ... when it says so, else the first four
        probe = BandWindows(p, 0)
        try:
            descs = list(probe.ds.descriptions)
        finally:
            probe.close()
        if len(descs) < 4:
            raise DataError(f"{p}: has {len(descs)} band(s); a multi-band scene needs B02, B03, B04, B08")
        named = [d.upper() if d else "" for d in descs]
        indices = [named.index(b) for b in BANDS] if all(b in named for b in BANDS) else [0, 1, 2, 3]
    radiometry = read_product_metadata(mtd) if mtd is not None else None
    bands = _open_bands(files, indices)
    try:
        notes: List[str] = []
        if offset is not None or scale is not None:
            explicit = _explicit(offset, scale, radiometry.nodata if radiometry else _files_nodata(bands))
            if radiometry is not None and (radiometry.offsets, radiometry.scale) != (explicit.offsets,
                                                                                     explicit.scale):
                notes.append(f"{p}: --offset / --scale override the product's {radiometry.describe()}")
            if radiometry is not None:
                explicit.level, explicit.baseline = radiometry.level, radiometry.baseline
            radiometry = explicit
        if radiometry is None:
            radiometry = _from_band_tags(bands)
            if radiometry is not None:
                radiometry.nodata = _files_nodata(bands)
        if radiometry is None:
            why = _unknown_offset(p, files)
            if why:
                raise DataError(why)
            floats = [b for b in bands if b.dtype.kind == "f"]
            if floats:
                raise DataError(f"{floats[0].path}: {floats[0].dtype} values, not digital numbers (reflectance x "
                                f"10000, as the On Cloud N chips): floats are most often reflectance already, "
                                f"which read as DN / 10000 would be 10000 times too dark; give --scale 1 for "
                                f"reflectance (--scale 10000 for digital numbers stored as floats)")
            radiometry = Radiometry(nodata=_files_nodata(bands))
        if radiometry.level is None and kind == "Sentinel-2 product":  # the layout tells the level
            radiometry.level = "L1C" if files[0].parent.name == "IMG_DATA" else "L2A"
        if radiometry.level == "L1C":
            notes.append(L1C_WARNING.format(path=p))
        if radiometry.level:
            kind = f"Sentinel-2 {radiometry.level} {'product' if kind == 'Sentinel-2 product' else kind}"
    except BaseException:
        for b in bands:
            b.close()
        raise
    for msg in notes:
        warnings.warn(msg, ProductWarning, stacklevel=2)
    return Scene(p, kind, bands, radiometry, notes)
