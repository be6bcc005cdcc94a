"""Shared fixtures: a small generated dataset (built once per session), the five real chips (if present), the
runtime's Python 3.9 environment; and the helpers that tests of more than one stage use."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

REPO = Path(__file__).resolve().parents[1]
#: builds the runtime's Python 3.9 environment (make runtime-env) and, with --check, says whether it is built
SCRIPT = REPO / "scripts" / "runtime_env.sh"
REAL_CHIPS = Path(os.environ.get("CLOUDKD_REAL_CHIPS", REPO.parent / "shared" / "data" / "real_chips"))

#: small but complete: several locations in train and test, every regime likely to appear. Labels by the opacity
#: rule: the annotator's margins (a median of 12 px, varying from chip to chip) cover much of a 96-px chip, and
#: the tests' few-step trainings then end with students unsure along every outline; the annotator rule has its own
#: tests (test_annotator.py, test_synth.py, test_cli.py) and the demo's quick variant uses it
SMALL = SynthConfig(n_train=30, n_test=10, size=96, seed=1, label_style="opacity")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "oncloudn"
    synthesize(root, SMALL, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def student(small_data, tmp_path_factory):
    """A unet-s run folder trained briefly on the small dataset (read-only for the tests that share it)."""
    from cloudkd.student.train import TrainConfig, fit

    run = tmp_path_factory.mktemp("student") / "run"
    fit(TrainConfig(data=str(small_data), out=str(run), model="unet-s", epochs=4, batch_size=4, crop=96, lr=5e-3,
                    accelerator="cpu", progress=False))
    return run


@pytest.fixture(scope="session")
def real_chips():
    if not (REAL_CHIPS / "test_features").is_dir():
        pytest.skip(f"real chips not found at {REAL_CHIPS}")
    return REAL_CHIPS


def write_chip(features_dir: Path, chip_id: str, bands: np.ndarray) -> Path:
    """Write a (4, H, W) uint16 array as the four band files of a chip (for hand-made test cases)."""
    d = Path(features_dir) / chip_id
    d.mkdir(parents=True, exist_ok=True)
    for name, band in zip(("B02", "B03", "B04", "B08"), bands):
        tifffile.imwrite(d / f"{name}.tif", band)
    return d


def make_dataset(root: Path, chips: dict, split: str = "train", labels: dict = None, locations: dict = None):
    """A hand-made dataset in the On Cloud N layout: ``chips`` maps chip_id -> (4, H, W) uint16."""
    import pandas as pd

    root = Path(root)
    for cid, arr in chips.items():
        write_chip(root / f"{split}_features", cid, arr)
    if labels is not None:
        (root / f"{split}_labels").mkdir(parents=True, exist_ok=True)
        for cid, lab in labels.items():
            tifffile.imwrite(root / f"{split}_labels" / f"{cid}.tif", lab)
    ids = sorted(chips)
    pd.DataFrame({"chip_id": ids,
                  "location": [(locations or {}).get(c, "somewhere") for c in ids],
                  "datetime": ["2020-04-29T08:20:47Z"] * len(ids)}).to_csv(root / f"{split}_metadata.csv",
                                                                          index=False)
    return root


def invoke(args, capsys):
    """Run the console entry point as a user would (``cloudkd ARGS``): (exit code, stdout + stderr)."""
    import sys
    from unittest import mock

    from cloudkd.cli import main

    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["cloudkd", *map(str, args)]):
        with pytest.raises(SystemExit) as e:
            main()
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def snapshot(*roots):
    """Every file and folder below ``roots`` with its size and modification time."""
    import os

    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = (Path(dirpath) / name).lstat()
                seen[str(Path(dirpath) / name)] = (st.st_size, st.st_mtime_ns)
    return seen


def one_line_refusal(code, text, says=None):
    """A refusal as the house rule wants it: exit 2, one line starting with 'error: ', no traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2, text
    assert "Traceback" not in text, text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    if says is not None:
        assert says in lines[0], text


def user_folder(path):
    """A folder of the user's own (cloudkd did not write it)."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("the user's notes\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(b"\x01\x02")
    return path


# ---------------------------------------------------------------------- the runtime's Python 3.9 environment
def _runtime_env_check(env_root, pins=None):
    """``scripts/runtime_env.sh --check`` for an environment folder (and a pin list): (exit code, output)."""
    env = {**os.environ, "CLOUDKD_RUNTIME_ENV": str(env_root)}
    if pins is not None:
        env["CLOUDKD_RUNTIME_PINS"] = str(pins)
    p = subprocess.run(["bash", str(SCRIPT), "--check"], env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, (p.stdout + p.stderr).strip()


@pytest.fixture(scope="session")
def runtime_python():
    """The runtime's Python 3.9 interpreter (``make runtime-env``); the test FAILS, naming the command, without it."""
    from cloudkd.submission.emulate import RUNTIME_LINK, runtime_env_python

    py = runtime_env_python()
    if py is None:
        where = os.environ.get("CLOUDKD_RUNTIME_ENV") or RUNTIME_LINK
        pytest.fail(f"the runtime's Python 3.9 environment is not built ({where} has no stamp): run `make "
                    f"runtime-env` (`make test` runs it first)", pytrace=False)
    code, out = _runtime_env_check(Path(py).parent.parent)
    if code != 0:
        pytest.fail(f"{out} (`make test` runs it first)", pytrace=False)
    return str(py)


# ---------------------------------------------------------------------- chips and scenes made from small_data
def wedged_copy(test, root):
    """The test split's chips under ``root`` with a nodata wedge (all bands 0) in each, a corner wedge on every
    other chip and a side wedge on the rest; returns {chip_id: boolean wedge mask}."""
    from cloudkd.data.chips import read_chip_dn

    size = SMALL.size
    yy, xx = np.mgrid[0:size, 0:size]
    wedges = {}
    for k, cid in enumerate(test.chip_ids()):
        dn = read_chip_dn(test.chip_dir(cid))
        wedge = (xx + yy) < size // 2 if k % 2 == 0 else (xx - yy) > size // 3
        dn[:, wedge] = 0
        write_chip(Path(root) / "test_features", cid, dn)
        wedges[cid] = wedge
    shutil.copy(test.metadata_csv, Path(root) / "test_metadata.csv")
    return wedges


def write_band_files(folder, scene, **tiff_kwargs):
    """A scene folder of one zlib-compressed TIFF per band (B02.tif ... B08.tif)."""
    from cloudkd.data import BANDS

    folder.mkdir()
    for band, data in zip(BANDS, scene):
        tifffile.imwrite(folder / f"{band}.tif", data, compression="zlib", **tiff_kwargs)
    return folder


def scene_from_chips(small_data, n=3):
    """An n x n mosaic of generated chips (4, 96n, 96n) uint16: realistic content across tile borders."""
    from cloudkd.data import resolve_split

    test = resolve_split(small_data, "test")
    ids = test.chip_ids()
    chips = [np.stack([tifffile.imread(test.chip_dir(ids[i % len(ids)]) / f"{b}.tif")
                       for b in ("B02", "B03", "B04", "B08")]) for i in range(n * n)]
    return np.concatenate([np.concatenate(chips[r * n:(r + 1) * n], axis=2) for r in range(n)], axis=1)
