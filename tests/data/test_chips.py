"""The data layer: reading chips in a fixed band order, normalisation, and every validation error."""

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cloudkd.data import (BANDS, DataError, load_index, normalise, read_chip, read_chip_dn, read_label,
                          resolve_split, validate_split, write_mask)
from cloudkd.data.dataset import ChipDataset
from cloudkd.data.normalise import MEAN, REFL_MAX, STD

from conftest import make_dataset, write_chip


def _bands(h=16, w=16, values=(100, 200, 300, 400)):
    return np.stack([np.full((h, w), v, np.uint16) for v in values])


def test_read_chip_band_order_and_scale(tmp_path):
    # each band file holds a distinct value so a swapped order cannot go unnoticed
    d = write_chip(tmp_path, "abcd", _bands(values=(1111, 2222, 3333, 4444)))
    x = read_chip(d)
    assert x.dtype == np.float32 and x.shape == (4, 16, 16)
    assert BANDS == ("B02", "B03", "B04", "B08")
    np.testing.assert_allclose(x[:, 0, 0], [0.1111, 0.2222, 0.3333, 0.4444], rtol=1e-6)
    assert read_chip_dn(d).dtype == np.uint16


def test_normalise_is_fixed_per_band_and_agrees_numpy_torch():
    refl = np.random.default_rng(0).uniform(0, 2.0, (2, 4, 8, 8)).astype(np.float32)
    a = normalise(refl)
    expect = (np.clip(refl, 0, REFL_MAX) - np.array(MEAN, np.float32)[:, None, None]) / \
        np.array(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(a, expect, rtol=1e-6)
    b = normalise(torch.from_numpy(refl)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # a chip is normalised the same alone or in a batch
    np.testing.assert_allclose(normalise(refl[1]), a[1], rtol=1e-6)
    with pytest.raises(ValueError, match="4, H, W"):
        normalise(np.zeros((3, 8, 8), np.float32))


def test_missing_band_names_chip_and_file(tmp_path):
    d = write_chip(tmp_path, "abcd", _bands())
    (d / "B04.tif").unlink()
    with pytest.raises(DataError, match=r"abcd.B04\.tif: missing band file"):
        read_chip(d)


def test_corrupt_tiff(tmp_path):
    d = write_chip(tmp_path, "abcd", _bands())
    (d / "B03.tif").write_bytes(b"II*\x00garbage, not a tiff at all")
    with pytest.raises(DataError, match=r"B03\.tif: unreadable or corrupt TIFF"):
        read_chip(d)
    full = (d / "B02.tif").read_bytes()
    (d / "B02.tif").write_bytes(full[: len(full) // 3])  # truncated file
    with pytest.raises(DataError, match=r"B02\.tif: unreadable or corrupt TIFF"):
        read_chip(d)


def test_wrong_dtype_and_shape(tmp_path):
    d = write_chip(tmp_path, "abcd", _bands())
    tifffile.imwrite(d / "B08.tif", np.zeros((16, 16), np.float32))
    with pytest.raises(DataError, match=r"B08\.tif: wrong dtype float32"):
        read_chip(d)
    tifffile.imwrite(d / "B08.tif", np.zeros((16, 12), np.uint16))
    with pytest.raises(DataError, match=r"B08\.tif: wrong shape \(16, 12\), expected \(16, 16\)"):
        read_chip(d)
    tifffile.imwrite(d / "B08.tif", np.zeros((16, 16), np.uint16))
    with pytest.raises(DataError, match=r"B02\.tif: wrong shape \(16, 16\), expected \(512, 512\)"):
        read_chip(d, shape=(512, 512))
    tifffile.imwrite(d / "B08.tif", np.zeros((3, 16, 16), np.uint16))
    with pytest.raises(DataError, match=r"B08\.tif: expected a single-band 2-D image"):
        read_chip(d)


def test_label_values_outside_01(tmp_path):
    p = tmp_path / "abcd.tif"
    tifffile.imwrite(p, np.array([[0, 1], [255, 1]], np.uint8))
    with pytest.raises(DataError, match=r"abcd\.tif: label values outside \{0, 1\} \(found \[255\]\)"):
        read_label(p)
    tifffile.imwrite(p, np.array([[0, 1], [1, 0]], np.float32))
    with pytest.raises(DataError, match="wrong dtype float32"):
        read_label(p)
    write_mask(p, np.array([[0, 1], [1, 0]], np.uint8))
    assert read_label(p).tolist() == [[0, 1], [1, 0]]


def test_write_mask_submission_format(tmp_path):
    from PIL import Image

    m = (np.random.default_rng(0).random((512, 512)) > 0.5).astype(np.uint8)
    p = write_mask(tmp_path / "abcd.tif", m)
    assert p.stat().st_size <= 524_288
    with Image.open(p) as im:
        assert im.size == (512, 512)
        np.testing.assert_array_equal(np.asarray(im), m)
    with tifffile.TiffFile(p) as t:
        assert t.pages[0].compression == 1 and t.pages[0].dtype == np.uint8
    assert [f.name for f in tmp_path.iterdir()] == ["abcd.tif"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        write_mask(tmp_path / "bad.tif", np.full((4, 4), 2, np.uint8))
    assert not (tmp_path / "bad.tif").exists()


def _good(tmp_path, n=3):
    chips = {f"c{i:03d}": _bands() for i in range(n)}
    labels = {c: np.zeros((16, 16), np.uint8) for c in chips}
    return make_dataset(tmp_path, chips, labels=labels, locations={"c000": "A", "c001": "B", "c002": "C"})


def test_validate_clean_dataset(tmp_path):
    root = _good(tmp_path)
    rep = validate_split(resolve_split(root))
    assert rep.ok and rep.n_chips == 3 and rep.shape == (16, 16)
    idx = load_index(resolve_split(root))
    assert idx.chip_id.tolist() == ["c000", "c001", "c002"]
    assert idx.location.tolist() == ["A", "B", "C"]
    assert all(idx.label.str.endswith(".tif"))


def test_validate_collects_every_problem(tmp_path):
    root = _good(tmp_path, n=3)
    split = resolve_split(root)
    (split.chip_dir("c000") / "B02.tif").unlink()                                # missing band
    (split.chip_dir("c001") / "B08.tif").write_bytes(b"not a tiff")              # corrupt
    tifffile.imwrite(split.label_path("c002"), np.full((16, 16), 7, np.uint8))   # label values
    write_chip(split.features_dir, "zzzz", _bands(8, 8))                         # folder not in CSV + mixed size
    meta = pd.read_csv(split.metadata_csv)
    meta.loc[len(meta)] = ["ghost", "X", "2020-01-01T00:00:00Z"]                 # CSV row without folder
    meta.to_csv(split.metadata_csv, index=False)
    rep = validate_split(split)
    text = "\n".join(rep.errors)
    assert not rep.ok
    assert "chip c000" in text and "B02.tif: missing band file" in text
    assert "chip c001" in text and "B08.tif: unreadable or corrupt TIFF" in text
    assert "chip c002" in text and "label values outside {0, 1} (found [7])" in text
    assert "chip(s) in train_metadata.csv without a folder" in text and "ghost" in text
    assert "not listed in" in text and "zzzz" in text
    assert "chip zzzz" in text and "wrong shape (8, 8), expected (16, 16)" in text
    with pytest.raises(DataError, match="problem"):
        rep.raise_if_failed()
    with pytest.raises(DataError, match="ghost"):
        load_index(split)


def test_missing_label_file(tmp_path):
    root = _good(tmp_path)
    split = resolve_split(root)
    split.label_path("c001").unlink()
    assert any("c001" in e and "missing label file" in e for e in validate_split(split).errors)
    with pytest.raises(DataError, match="no label file for 1 chip"):
        load_index(split)


def test_resolve_split_and_hidden_folders(tmp_path):
    root = _good(tmp_path)
    (root / "train_features" / ".ipynb_checkpoints").mkdir()
    assert resolve_split(root).chip_ids() == ["c000", "c001", "c002"]
    assert resolve_split(root / "train_features").name == "train"
    with pytest.raises(DataError, match="no test_features/ folder"):
        resolve_split(root, "test")
    with pytest.raises(DataError, match="does not exist"):
        resolve_split(tmp_path / "nope")


def test_dataset_returns_dicts(small_data):
    idx = load_index(resolve_split(small_data, "train"))
    ds = ChipDataset(idx)
    s = ds[0]
    assert set(s) == {"image", "mask", "chip_id"}
    assert s["image"].shape == (4, 96, 96) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (1, 96, 96) and set(torch.unique(s["mask"]).tolist()) <= {0.0, 1.0}
    assert s["chip_id"] == idx.chip_id[0]
    np.testing.assert_allclose(s["image"].numpy(), normalise(read_chip(idx.features[0])), rtol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 4, 96, 96) and len(batch["chip_id"]) == 4
    # unlabelled test chips: no mask key
    test = load_index(resolve_split(small_data, "test"), require_labels=False)
    assert "mask" not in ChipDataset(test)[0]


def test_real_chips_read(real_chips):
    split = resolve_split(real_chips / "test_features")
    ids = split.chip_ids()
    assert ids == ["adwp", "adwu", "adwz", "adxp", "akny"]
    rep = validate_split(split, shape=(512, 512), labels=False)
    assert rep.ok, rep.errors
    idx = load_index(split, require_labels=False)
    assert set(idx.location) == {"Chifunfu", "Addis Ababa"}
    x = read_chip(split.chip_dir("adxp"))  # fully overcast: bright, B02 > B03 > B04 > B08 like cloud tops
    med = np.median(x, axis=(1, 2))
    assert med[0] > 0.9 and med[0] > med[1] > med[2] > med[3]
    v = read_chip(split.chip_dir("akny"))  # vegetated highlands: NIR far above red
    assert np.median(v[3]) > 2 * np.median(v[2])
