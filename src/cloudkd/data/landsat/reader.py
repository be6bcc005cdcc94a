"""Landsat-8: the 38-Cloud / 95-Cloud layout, its reader, the import into the On Cloud N layout, and stitching.

38-Cloud (and 95-Cloud, which adds training scenes to it) ship Landsat-8 scenes cut into 384x384 patches, one
folder per band, one 16-bit TIFF per patch and band::

    ROOT/38-Cloud_training/train_red/red_patch_{n}_{row}_by_{col}_{scene_id}.TIF     (also train_green,
                           train_gt/gt_patch_{n}_{row}_by_{col}_{scene_id}.TIF       train_blue, train_nir)
                           training_patches_38-cloud_nonempty.csv                    column ``name``
    ROOT/38-Cloud_test/test_red/red_patch_...TIF ...                                 (no per-patch gt)
                       Entire_scene_gts/edited_corrected_gts_{scene_id}.TIF          whole-scene truth

The band folders may also sit directly in ROOT. Digital numbers are Landsat-8 Level-1 quantised values
(reflectance = 2e-5 * DN - 0.1, no sun-angle correction), DN 0 = outside the scene; ground truth is 0/255.
Each scene was zero-padded to a whole number of patches, the padding split evenly between the two sides of
each axis (the remainder at the bottom/right), and cut row-major: ``n = (row - 1) * cols + col``, 1-based.
Patches that are entirely empty (black, outside the tilted Landsat footprint) carry no information: the dataset
lists the non-empty training patches in ``training_patches_*_nonempty.csv`` and recommends training on those
only; at test time an empty patch's mask is 0 by definition.

cloudkd keeps one model family for both satellites: :func:`import_38cloud` writes the patches in the On Cloud N
layout (bands B02, B03, B04, B08 = blue, green, red, NIR; uint16 reflectance x 10000; labels 0/1; the scene id
as the ``location``, so folds never split a scene), which every command then reads through the one reader in
:mod:`cloudkd.data.chips`. :func:`cloudkd.data.chips.resolve_split` does this import by itself, once, when it
is given a 38-Cloud root. The test split keeps the whole-scene truth (``test_scene_gts/``) and a patch table
(``test_patches.csv``) so :func:`cloudkd.data.landsat.scenes.score_scenes` can stitch predictions back into scenes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd
import tifffile

from ...common.errors import DataError
from ..chips import _read_tiff, read_band, unfinished_problem, write_band, write_mask
from ...common.io import atomic_write
from ..normalise import BANDS, SCALE

#: Patch side in pixels.
PATCH = 384
#: 38-Cloud band folder names, in the model's band order (B02, B03, B04, B08).
LANDSAT_BANDS = ("blue", "green", "red", "nir")
#: Landsat-8 Level-1 reflectance rescaling (MTL REFLECTANCE_MULT_BAND_x / REFLECTANCE_ADD_BAND_x, all bands).
REFL_MULT = 2e-5
REFL_ADD = -0.1
#: Folder names of the official archives, searched under a root.
SPLIT_DIRS = {"train": ("38-Cloud_training", "95-cloud_training_only_additional_to38-cloud", "95-Cloud_training"),
              "test": ("38-Cloud_test", "95-Cloud_test")}
SCENE_GTS = "Entire_scene_gts"
#: Where :func:`imported_root` puts the On Cloud N view of a 38-Cloud root (default: beside it).
CACHE_ENV = "CLOUDKD_LANDSAT_CACHE"
from ...common.outputs import IMPORT_STAMP as STAMP  # noqa: E402  (the import's stamp: its mark)

_PATCH_RE = re.compile(r"^(?:(?P<band>red|green|blue|nir|gt)_)?patch_(?P<n>\d+)_(?P<row>\d+)_by_(?P<col>\d+)_"
                       r"(?P<scene>[A-Za-z0-9_]+?)(?:\.tiff?)?$", re.IGNORECASE)
_DATE_RE = re.compile(r"^L[COTEM]0\d_[A-Z0-9]{4}_\d{6}_(\d{4})(\d{2})(\d{2})_")


@dataclass(frozen=True, order=True)
class PatchName:
    """``patch_{n}_{row}_by_{col}_{scene_id}``: the patch's id (the chip id once imported)."""

    scene: str
    row: int
    col: int
    n: int

    @property
    def name(self) -> str:
        return f"patch_{self.n}_{self.row}_by_{self.col}_{self.scene}"

    def file(self, band: str) -> str:
        return f"{band}_{self.name}.TIF"


def parse_patch_name(name: str) -> PatchName:
    """Parse ``[band_]patch_{n}_{row}_by_{col}_{scene}[.TIF]``; raises :class:`DataError` on anything else."""
    m = _PATCH_RE.match(Path(name).name)
    if not m or int(m["row"]) < 1 or int(m["col"]) < 1:
        raise DataError(f"{name}: not a 38-Cloud patch name ([band_]patch_{{n}}_{{row}}_by_{{col}}_{{scene_id}}.TIF)")
    return PatchName(m["scene"], int(m["row"]), int(m["col"]), int(m["n"]))


def scene_date(scene_id: str) -> str:
    """The acquisition date of a Landsat product id (``LC08_L1TP_PPPRRR_YYYYMMDD_...``) as ISO, else ''."""
    m = _DATE_RE.match(scene_id)
    return f"{m[1]}-{m[2]}-{m[3]}T00:00:00Z" if m else ""


# ----------------------------------------------------------------------------------------------------------------
# Digital numbers
# ----------------------------------------------------------------------------------------------------------------
def landsat_dn_to_dn(dn: np.ndarray) -> np.ndarray:
    """Landsat-8 L1 DN -> the project's uint16 reflectance x 10000 (DN 0 stays 0 = nodata; valid pixels >= 1)."""
    dn = np.asarray(dn)
    refl = dn.astype(np.float32) * np.float32(REFL_MULT) + np.float32(REFL_ADD)
    out = np.clip(np.rint(refl * np.float32(SCALE)), 1, 65535).astype(np.uint16)
    out[dn == 0] = 0
    return out


def dn_to_landsat_dn(dn: np.ndarray) -> np.ndarray:
    """The inverse: uint16 reflectance x 10000 -> Landsat-8 L1 DN (0 stays 0), for the generator."""
    dn = np.asarray(dn)
    refl = dn.astype(np.float64) / SCALE
    out = np.clip(np.rint((refl - REFL_ADD) / REFL_MULT), 1, 65535).astype(np.uint16)
    out[dn == 0] = 0
    return out


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading the layout
# ----------------------------------------------------------------------------------------------------------------
def split_dirs(root: os.PathLike | str) -> Dict[str, Path]:
    """{split: folder holding ``{split}_red`` ...} for the splits present under a 38-Cloud root (maybe none)."""
    root = Path(root)
    found = {}
    for split in ("train", "test"):
        for cand in (root,) + tuple(root / d for d in SPLIT_DIRS[split]):
            if (cand / f"{split}_red").is_dir():
                found[split] = cand
                break
    return found


def is_38cloud(path: os.PathLike | str) -> bool:
    return Path(path).is_dir() and bool(split_dirs(path))


def read_patch(split_dir: os.PathLike | str, split: str, patch: PatchName) -> np.ndarray:
    """The four bands of a patch as uint16 (4, H, W) Landsat DN in B02, B03, B04, B08 order."""
    split_dir = Path(split_dir)
    bands = []
    for band in LANDSAT_BANDS:
        p = split_dir / f"{split}_{band}" / patch.file(band)
        arr = read_band(p, "Landsat-8 digital numbers")
        if bands and arr.shape != bands[0].shape:
            raise DataError(f"{p}: wrong shape {arr.shape}, expected {bands[0].shape} like the blue band")
        bands.append(arr)
    return np.stack(bands)


def read_gt(path: os.PathLike | str, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A 38-Cloud ground truth (patch or whole scene; 0/255, 0/1 also accepted) as uint8 {0, 1}."""
    path = Path(path)
    arr = _read_tiff(path, "ground-truth file")
    if arr.dtype.kind not in "uib":
        raise DataError(f"{path}: wrong dtype {arr.dtype}, expected integer ground truth (0/255)")
    if shape is not None and arr.shape != tuple(shape):
        raise DataError(f"{path}: wrong shape {arr.shape}, expected {tuple(shape)}")
    values = np.unique(arr)
    if not set(values.tolist()) <= {0, 1, 255}:
        raise DataError(f"{path}: ground-truth values outside {{0, 255}} (found {values[:6].tolist()})")
    return (arr > 0).astype(np.uint8)


def list_patches(split_dir: os.PathLike | str, split: str) -> List[PatchName]:
    """Every patch of a split (from ``{split}_red``), checked to exist in the other band folders; sorted."""
    split_dir = Path(split_dir)
    red = split_dir / f"{split}_red"
    names = sorted(e.name for e in os.scandir(red) if e.is_file() and not e.name.startswith("."))
    patches = []
    for f in names:
        if not f.lower().endswith((".tif", ".tiff")):
            continue
        p = parse_patch_name(red / f)
        patches.append(p)
    if not patches:
        raise DataError(f"{red}: no patch files (red_patch_*.TIF)")
    gt = ("gt",) if (split_dir / f"{split}_gt").is_dir() else ()
    for band in LANDSAT_BANDS[:2] + LANDSAT_BANDS[3:] + gt:
        folder = split_dir / f"{split}_{band}"
        if not folder.is_dir():
            raise DataError(f"{folder}: band folder does not exist")
        have = {f.lower() for f in os.listdir(folder)}
        missing = [p.file(band) for p in patches if p.file(band).lower() not in have]
        if missing:
            raise DataError(f"{folder}: {len(missing)} patch file(s) missing, e.g. {missing[:3]}")
    return sorted(patches)


def nonempty_list(split_dir: os.PathLike | str) -> Optional[set]:
    """Patch names listed by the dataset's ``*nonempty*.csv`` (column ``name``), or None when there is none."""
    split_dir = Path(split_dir)
    for d in (split_dir, split_dir.parent):
        for f in sorted(d.glob("*nonempty*.csv")):
            try:
                df = pd.read_csv(f, dtype=str)
            except Exception as exc:
                raise DataError(f"{f}: unreadable CSV ({exc})") from None
            if "name" not in df.columns:
                raise DataError(f"{f}: no 'name' column (expected the list of non-empty patch names)")
            return set(df["name"].str.strip())
    return None


def scene_gt_path(split_dir: Path, scene: str) -> Optional[Path]:
    d = split_dir / SCENE_GTS
    for name in (f"edited_corrected_gts_{scene}.TIF", f"edited_corrected_gts_{scene}.tif"):
        if (d / name).is_file():
            return d / name
    return None


# ----------------------------------------------------------------------------------------------------------------
# Scenes <-> patches
# ----------------------------------------------------------------------------------------------------------------
def padding(shape: Tuple[int, int], grid: Tuple[int, int], patch: int = PATCH) -> Tuple[int, int]:
    """(top, left) zero padding of a scene of ``shape`` in a ``grid`` of (rows, cols) patches."""
    (h, w), (rows, cols) = shape, grid
    if rows * patch < h or cols * patch < w:
        raise ValueError(f"a {rows}x{cols} grid of {patch}-px patches cannot hold a {h}x{w} scene")
    return (rows * patch - h) // 2, (cols * patch - w) // 2


def grid_for(shape: Tuple[int, int], patch: int = PATCH) -> Tuple[int, int]:
    """The smallest (rows, cols) grid of patches that holds a scene of ``shape``."""
    return -(-shape[0] // patch), -(-shape[1] // patch)


def cut_scene(scene: np.ndarray, scene_id: str, patch: int = PATCH,
              grid: Optional[Tuple[int, int]] = None) -> Dict[PatchName, np.ndarray]:
    """Zero-pad a scene (..., H, W) evenly and cut it row-major into patches, named as the dataset names them."""
    h, w = scene.shape[-2:]
    rows, cols = grid or grid_for((h, w), patch)
    top, left = padding((h, w), (rows, cols), patch)
    canvas = np.zeros(scene.shape[:-2] + (rows * patch, cols * patch), scene.dtype)
    canvas[..., top:top + h, left:left + w] = scene
    out = {}
    for r in range(rows):
        for c in range(cols):
            name = PatchName(scene_id, r + 1, c + 1, r * cols + c + 1)
            out[name] = canvas[..., r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
    return out


def stitch(patches: Dict[PatchName, np.ndarray], shape: Tuple[int, int], grid: Tuple[int, int],
           patch: int = PATCH) -> np.ndarray:
    """Put patches (H, W) back on the padded grid and crop the padding: the (H, W) scene. Absent patches are 0."""
    rows, cols = grid
    top, left = padding(shape, grid, patch)
    dtype = next(iter(patches.values())).dtype if patches else np.uint8
    canvas = np.zeros((rows * patch, cols * patch), dtype)
    for p, arr in patches.items():
        if not (1 <= p.row <= rows and 1 <= p.col <= cols):
            raise DataError(f"{p.name}: row/col outside the scene's {rows}x{cols} grid")
        if arr.shape != (patch, patch):
            raise DataError(f"{p.name}: patch shape {arr.shape}, expected ({patch}, {patch})")
        canvas[(p.row - 1) * patch:p.row * patch, (p.col - 1) * patch:p.col * patch] = arr
    return canvas[top:top + shape[0], left:left + shape[1]]


# ----------------------------------------------------------------------------------------------------------------
# Import into the On Cloud N layout
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    root: Path
    n_patches: Dict[str, int]
    n_empty: Dict[str, int]
    n_scenes: Dict[str, int]
    seconds: float
    reused: bool


def _signature(root: Path) -> dict:
    """What the import depends on: the patch files of every split (count, total bytes, newest mtime)."""
    sig = {}
    for split, d in sorted(split_dirs(root).items()):
        n, size, mtime = 0, 0, 0.0
        for band in LANDSAT_BANDS + ("gt",):
            folder = d / f"{split}_{band}"
            if folder.is_dir():
                for e in os.scandir(folder):
                    st = e.stat()
                    n, size, mtime = n + 1, size + st.st_size, max(mtime, st.st_mtime)
        gts = d / SCENE_GTS
        if gts.is_dir():
            for e in os.scandir(gts):
                st = e.stat()
                n, size, mtime = n + 1, size + st.st_size, max(mtime, st.st_mtime)
        sig[split] = {"dir": str(d.resolve()), "files": n, "bytes": size, "mtime": round(mtime, 3)}
    return sig


def imported_root(root: os.PathLike | str) -> Path:
    """Where the On Cloud N view of a 38-Cloud root lives: ``$CLOUDKD_LANDSAT_CACHE/{name}`` or ``ROOT.oncloudn``."""
    root = Path(root).resolve()
    cache = os.environ.get(CACHE_ENV)
    return Path(cache) / f"{root.name}.oncloudn" if cache else root.parent / f"{root.name}.oncloudn"


def ensure_imported(root: os.PathLike | str, progress: bool = True) -> Path:
    """The On Cloud N view of a 38-Cloud root, importing it first when it is missing or out of date."""
    return import_38cloud(root, imported_root(root), progress=progress).root


def import_38cloud(root: os.PathLike | str, out: os.PathLike | str, progress: bool = True,
                   force: bool = False) -> ImportResult:
    """Write a 38-Cloud / 95-Cloud root in the On Cloud N layout under ``out`` (see the module docstring).

    Training patches: the non-empty ones (the dataset's ``*nonempty*.csv`` when present, else every patch with a
    non-zero pixel), labels from ``train_gt``. Test patches: the non-empty ones; labels cut from the whole-scene
    truth when ``Entire_scene_gts`` is there; ``test_patches.csv`` lists every patch (empty ones too) with its
    scene, row and col, and ``test_scene_gts/{scene}.tif`` keeps the truth for :func:`score_scenes`.
    The import is written to a temporary folder and renamed, so ``out`` is complete or absent; it is reused
    while the source files are unchanged.
    """
    root, out = Path(root), Path(out)
    dirs = split_dirs(root)
    if not dirs:
        raise DataError(f"{root}: no train_red/ or test_red/ folder (nor 38-Cloud_training/, 38-Cloud_test/): "
                        f"not a 38-Cloud / 95-Cloud dataset")
    for where in sorted({root, *(d.parent for d in dirs.values())}):  # a generator's root holds 38-Cloud_*/
        unfinished = unfinished_problem(where)
        if unfinished:
            raise DataError(unfinished)
    from ...common.outputs import check_folder, folder_lock, outputs_apart

    # the output policy: never into, onto or around the source; --force replaces only an import cloudkd wrote
    outputs_apart([out], [root, *dirs.values()])
    sig = _signature(root)
    stamp = out / STAMP
    if stamp.is_file() and not force:
        try:
            have = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            have = {}
        if have.get("source") == sig:
            return ImportResult(out, have["n_patches"], have["n_empty"], have["n_scenes"], 0.0, True)
    if out.exists() and not force:
        # replace only this root's own import (its source changed); anything else in ``out`` is the user's
        try:
            owner = json.loads(stamp.read_text()).get("source_root") if stamp.is_file() else None
        except json.JSONDecodeError:
            owner = None
        if owner != str(root.resolve()):
            raise DataError(f"{out}: exists and is not this dataset's import; choose another --out, or --force to "
                            f"replace it")
    check_folder(out, "landsat-import", force=True)  # a folder cloudkd did not write is refused even with --force
    with folder_lock(out):
        return _write_import(root, dirs, sig, out, progress)


def _write_import(root: Path, dirs: Dict[str, Path], sig: dict, out: Path, progress: bool) -> ImportResult:
    """Build the import beside ``out``, then swap it in (``out``'s owner was checked by :func:`import_38cloud`)."""
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    n_patches, n_empty, n_scenes = {}, {}, {}
    try:
        for split, d in dirs.items():
            n_patches[split], n_empty[split], n_scenes[split] = _import_split(d, split, tmp, progress)
        meta = {"source": sig, "source_root": str(root.resolve()), "n_patches": n_patches, "n_empty": n_empty,
                "n_scenes": n_scenes, "dn": f"reflectance = {REFL_MULT} * DN + {REFL_ADD}, x {SCALE:g}"}
        (tmp / STAMP).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(out, n_patches, n_empty, n_scenes, time.perf_counter() - t0, False)


def _import_split(d: Path, split: str, out: Path, progress: bool) -> Tuple[int, int, int]:
    patches = list_patches(d, split)
    listed = nonempty_list(d) if split == "train" else None
    has_gt = (d / f"{split}_gt").is_dir()
    by_scene: Dict[str, List[PatchName]] = {}
    for p in patches:
        by_scene.setdefault(p.scene, []).append(p)
    grids = {s: (max(p.row for p in ps), max(p.col for p in ps)) for s, ps in by_scene.items()}
    scene_labels: Dict[str, Dict[PatchName, np.ndarray]] = {}
    if not has_gt:
        for s in by_scene:
            gt = scene_gt_path(d, s)
            if gt is not None:
                truth = read_gt(gt)
                write_mask(out / f"{split}_scene_gts" / f"{s}.tif", truth)
                scene_labels[s] = cut_scene(truth, s, grid=grids[s])
    with_labels = has_gt or len(scene_labels) == len(by_scene)
    if not has_gt and scene_labels and not with_labels:
        missing = sorted(set(by_scene) - set(scene_labels))
        raise DataError(f"{d / SCENE_GTS}: no whole-scene truth for {len(missing)} scene(s): {missing[:5]}")
    rows, table = [], []
    iterator: Iterable[PatchName] = patches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(patches, desc=f"import 38-Cloud {split}", unit="patch")
    for p in iterator:
        if listed is not None and p.name not in listed:
            table.append((p, True))
            continue
        dn = read_patch(d, split, p)
        if not dn.any():
            table.append((p, True))
            continue
        if dn.shape[1:] != (PATCH, PATCH):
            raise DataError(f"{d / f'{split}_red' / p.file('red')}: wrong shape {dn.shape[1:]}, "
                            f"expected ({PATCH}, {PATCH})")
        table.append((p, False))
        chip = out / f"{split}_features" / p.name
        chip.mkdir(parents=True)
        for b, band in enumerate(BANDS):
            write_band(chip / f"{band}.tif", landsat_dn_to_dn(dn[b]))
        if has_gt:
            label = read_gt(d / f"{split}_gt" / p.file("gt"), dn.shape[1:])
        elif with_labels:
            label = scene_labels[p.scene][p]
        if with_labels:
            write_mask(out / f"{split}_labels" / f"{p.name}.tif", label)
        rows.append({"chip_id": p.name, "location": p.scene, "datetime": scene_date(p.scene)})
    if not rows:
        raise DataError(f"{d}: every {split} patch is empty (all bands 0)")
    pd.DataFrame(rows).to_csv(out / f"{split}_metadata.csv", index=False)
    pd.DataFrame([{"chip_id": p.name, "scene": p.scene, "n": p.n, "row": p.row, "col": p.col, "empty": e,
                   "rows": grids[p.scene][0], "cols": grids[p.scene][1]} for p, e in table]) \
        .to_csv(out / f"{split}_patches.csv", index=False)
    return len(rows), sum(e for _, e in table), len(by_scene)


def read_patch_table(root: os.PathLike | str, split: str = "test") -> pd.DataFrame:
    """``{split}_patches.csv`` of an imported root: every patch with scene, n, row, col, empty, rows, cols."""
    path = Path(root) / f"{split}_patches.csv"
    if not path.is_file():
        raise DataError(f"{path}: no patch table; is {root} a 38-Cloud dataset (or its import)?")
    return pd.read_csv(path, dtype={"chip_id": str, "scene": str})


def write_gt(path: os.PathLike | str, truth: np.ndarray) -> Path:
    """A ground truth (patch or whole scene) as the dataset stores it: uint8 0/255."""
    arr = (np.asarray(truth) > 0).astype(np.uint8) * np.uint8(255)
    return atomic_write(path, lambda t: tifffile.imwrite(t, arr, photometric="minisblack", compression=None))
