"""Shared fixtures: a small generated dataset (built once per session) and the five real chips (if present)."""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

REPO = Path(__file__).resolve().parents[1]
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
