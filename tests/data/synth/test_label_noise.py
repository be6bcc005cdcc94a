"""Label noise in the generator (``SynthConfig.label_noise``, ``cloudkd data synth --label-noise``): wrong train labels
of known kinds, against the clean dataset of the same config, while everything else stays byte-identical."""

import json
import math
import sys
from dataclasses import replace
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from cloudkd.cli import main
from cloudkd.data import DataError, read_label
from cloudkd.data.chips import UNFINISHED, read_chip_dn
from cloudkd.data.synth import sentinel2
from cloudkd.data.synth.label_noise import NOISE_KINDS
from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize

# 40 train chips on 4 locations (so swaps have partners), many nodata chips: with this seed every kind is drawn
NOISY = SynthConfig(n_train=40, n_test=4, size=64, seed=5, n_train_locations=4, p_nodata=0.3, label_noise=0.25)
CLEAN = replace(NOISY, label_noise=0.0)
KW = {k: getattr(CLEAN, k) for k in ("n_train", "n_test", "size", "seed", "n_train_locations", "p_nodata")}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("noise")
    synthesize(base / "clean", CLEAN, workers=2, progress=False)
    synthesize(base / "default", SynthConfig(**KW), workers=1, progress=False)  # label_noise not given at all
    synthesize(base / "noisy", NOISY, workers=2, progress=False)
    return {k: base / k for k in ("clean", "default", "noisy")}


def _info(root, split="train"):
    return pd.read_csv(root / f"{split}_synth_info.csv", dtype=str, keep_default_na=False).set_index("chip_id")


def _files(root, pattern):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


def _label(root, cid):
    return read_label(root / "train_labels" / f"{cid}.tif")


def _moved(label, dy, dx):
    """``label`` translated by (dy, dx) with zeros where nothing moved in (written independently of the module)."""
    out = np.roll(label, (dy, dx), axis=(0, 1))
    rows, cols = np.arange(label.shape[0]), np.arange(label.shape[1])
    out[(rows < dy) | (rows >= label.shape[0] + dy)] = 0  # the rows and columns that wrapped round
    out[:, (cols < dx) | (cols >= label.shape[1] + dx)] = 0
    return out


def test_the_count_is_exact_every_kind_appears_and_test_labels_stay_clean(roots):
    info = _info(roots["noisy"])
    noisy = info[info.label_noise != ""]
    assert len(noisy) == round(NOISY.label_noise * NOISY.n_train) == 10
    assert set(noisy.label_noise) == set(NOISE_KINDS), noisy.label_noise.value_counts()
    assert (info.loc[info.label_noise != "swap", "noise_source"] == "").all()
    assert (noisy.loc[noisy.label_noise == "swap", "noise_source"] != "").all()
    # the test split: same labels, same info file (no noise columns), same metadata
    for pattern in ("test_labels/*", "test_features/**/*", "test_*.csv"):
        assert _files(roots["noisy"], pattern) == _files(roots["clean"], pattern), pattern
    assert "label_noise" not in _info(roots["noisy"], "test").columns
    # cloud_fraction stays the true one; the other columns are those of the clean dataset
    clean = _info(roots["clean"])
    assert list(info.columns) == list(clean.columns) + ["label_noise", "noise_source"]
    assert info[clean.columns].equals(clean)


def test_each_kind_of_noise_is_what_it_says_against_the_clean_labels(roots):
    info, meta = _info(roots["noisy"]), pd.read_csv(roots["clean"] / "train_metadata.csv", dtype=str,
                                                   keep_default_na=False).set_index("chip_id")
    offsets = {}
    for cid, row in info[info.label_noise != ""].iterrows():
        clean, noisy = _label(roots["clean"], cid), _label(roots["noisy"], cid)
        assert not np.array_equal(clean, noisy), f"{cid}: the noisy label equals the clean one"
        kind = row.label_noise
        if kind == "swap":
            src = row.noise_source
            assert src != cid and src in meta.index and meta.location[src] == meta.location[cid]
            source = _label(roots["clean"], src)
            assert np.array_equal(noisy, source)
            union = np.count_nonzero(clean | source)
            assert union and np.count_nonzero(clean & source) / union < 0.5
        elif kind == "shift":
            size = NOISY.size
            hits = [(dy, dx) for dy in range(-size // 5, size // 5 + 1) for dx in range(-size // 5, size // 5 + 1)
                    if (dy, dx) != (0, 0) and np.array_equal(_moved(clean, dy, dx), noisy)]
            assert hits, f"{cid}: not a translation of the clean label"
            assert any(0.08 * size - 1 <= math.hypot(*h) <= 0.15 * size + 1 for h in hits), hits
            offsets.setdefault(meta.location[cid], []).append(set(hits))
        elif kind == "empty":
            assert not noisy.any() and clean.mean() >= 0.3
        elif kind == "full":
            assert noisy.all() and clean.mean() <= 0.05
        else:
            assert kind == "nodata"
            wedge = (read_chip_dn(roots["clean"] / "train_features" / cid) == 0).all(axis=0)
            assert wedge.any()
            assert noisy[wedge].all() and np.array_equal(noisy[~wedge], clean[~wedge])
    assert offsets  # the chips of one location move together: one offset explains them all
    for loc, hits in offsets.items():
        assert set.intersection(*hits), f"{loc}: its shifted chips moved differently {hits}"


def test_features_and_clean_labels_are_byte_identical(roots):
    noisy, clean = roots["noisy"], roots["clean"]
    assert _files(noisy, "train_features/**/*") == _files(clean, "train_features/**/*")
    assert _files(noisy, "train_metadata.csv") == _files(clean, "train_metadata.csv")
    info = _info(noisy)
    for cid in info.index[info.label_noise == ""]:
        assert (noisy / f"train_labels/{cid}.tif").read_bytes() == (clean / f"train_labels/{cid}.tif").read_bytes()
    assert sorted(p.name for p in (noisy / "train_labels").iterdir()) == \
        sorted(p.name for p in (clean / "train_labels").iterdir())  # no temporary files left


def test_label_noise_0_writes_exactly_what_the_generator_wrote_before(roots):
    clean, default = roots["clean"], roots["default"]
    every = {**_files(clean, "**/*")}
    every.pop("synth.json")
    got = _files(default, "**/*")
    got.pop("synth.json")
    assert got == every
    assert "label_noise" not in _info(clean).columns
    # the stamp keeps the config it had (no label_noise key), so datasets generated before are still reused
    assert "label_noise" not in json.loads((clean / "synth.json").read_text())["config"]
    assert json.loads((roots["noisy"] / "synth.json").read_text())["config"]["label_noise"] == 0.25


def test_reuse_and_refusal_follow_label_noise(tmp_path):
    cfg = SynthConfig(n_train=8, n_test=2, size=32, seed=2, label_noise=0.25, label_style="opacity")
    root = tmp_path / "ds"
    assert not synthesize(root, cfg, workers=1, progress=False).reused
    assert synthesize(root, cfg, workers=1, progress=False).reused
    for other in (0.1, 0.0):
        with pytest.raises(DataError, match="different config"):
            synthesize(root, replace(cfg, label_noise=other), workers=1, progress=False)
    again = synthesize(root, replace(cfg, label_noise=0.0), workers=1, overwrite=True, progress=False)
    assert not again.reused and "label_noise" not in _info(root).columns


def test_noise_is_written_before_the_stamp(tmp_path, monkeypatch):
    def killed(*a, **k):
        raise KeyboardInterrupt("killed while adding label noise")

    monkeypatch.setattr(sentinel2, "apply_label_noise", killed)
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        synthesize(root, SynthConfig(n_train=8, n_test=2, size=32, seed=2, label_noise=0.25), workers=1,
                   progress=False)
    assert (root / UNFINISHED).is_file() and not (root / "synth.json").exists()


@pytest.mark.parametrize("value", [0.6, -0.1, float("nan")])
def test_config_refuses_label_noise_outside_0_to_half(value):
    with pytest.raises(ValueError, match="label_noise"):
        SynthConfig(label_noise=value)


@pytest.mark.parametrize("value", ["0.6", "-0.1"])
def test_cli_refuses_label_noise_outside_0_to_half_in_one_line(tmp_path, capsys, value):
    out = tmp_path / "new"
    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["cloudkd", "data", "synth", str(out), "--n-train", "4", "--n-test", "2",
                                         "--size", "32", "--label-noise", value]):
        with pytest.raises(SystemExit) as e:
            main()
    got = capsys.readouterr()
    text = got.out + got.err
    assert e.value.code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--label-noise" in lines[0], text
    assert "Traceback" not in text
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_shifted_chips_of_one_location_move_by_the_same_offset(tmp_path):
    noisy_cfg = SynthConfig(n_train=20, n_test=0, size=48, seed=7, n_train_locations=1, label_noise=0.5,
                            label_style="opacity")
    synthesize(tmp_path / "clean", replace(noisy_cfg, label_noise=0.0), workers=1, progress=False)
    synthesize(tmp_path / "noisy", noisy_cfg, workers=1, progress=False)
    info = _info(tmp_path / "noisy")
    shifted = info.index[info.label_noise == "shift"]
    assert len(shifted) >= 2 and info.location.nunique() == 1
    r = noisy_cfg.size // 5
    hits = [{(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0) and
             np.array_equal(_moved(_label(tmp_path / "clean", cid), dy, dx), _label(tmp_path / "noisy", cid))}
            for cid in shifted]
    assert all(hits) and set.intersection(*hits), hits
