"""The generator: exact On Cloud N layout, determinism, physically sensible spectra, labels that follow opacity."""

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cloudkd.data import DataError, load_index, read_chip, read_label, resolve_split, validate_split
from cloudkd.data.synth.catalogue import COVERS, LOCATIONS
from cloudkd.data.synth.ground import render_cover
from cloudkd.data.synth.sentinel2 import SynthConfig, _Spectral, plan_dataset, render_chip, split_locations, synthesize

from conftest import SMALL


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synth.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_matches_on_cloud_n(small_data):
    for name in ("train", "test"):
        split = resolve_split(small_data, name)
        rep = validate_split(split, shape=(SMALL.size, SMALL.size))
        assert rep.ok, rep.errors
        meta = pd.read_csv(split.metadata_csv, dtype=str)
        assert list(meta.columns) == ["chip_id", "location", "datetime", "cloudpath"]
        assert meta.chip_id.str.fullmatch(r"[a-z]{4}").all()
        assert meta.datetime.str.fullmatch(r"20(18|19|20)-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
        assert (meta.cloudpath == "az://./" + name + "_features/" + meta.chip_id).all()
        assert len(meta) == (SMALL.n_train if name == "train" else SMALL.n_test)
    train = load_index(resolve_split(small_data, "train"))
    test = load_index(resolve_split(small_data, "test"))
    assert train.location.nunique() >= 5
    assert not set(train.location) & set(test.location), "test locations must be unseen in training"
    assert not set(train.chip_id) & set(test.chip_id)


def test_files_are_geotiffs_readable_by_tifffile_and_pil(small_data):
    split = resolve_split(small_data, "train")
    cid = split.chip_ids()[0]
    band = split.chip_dir(cid) / "B02.tif"
    with tifffile.TiffFile(band) as t:
        page = t.pages[0]
        assert page.dtype == np.uint16 and page.shape == (SMALL.size, SMALL.size) and page.compression == 1
        geo = t.geotiff_metadata
        assert geo["ModelPixelScale"][:2] == [10.0, 10.0]
        assert 32601 <= int(geo["ProjectedCSTypeGeoKey"]) <= 32760
        assert page.tags["GDAL_NODATA"].value == "0"
    with Image.open(band) as im:
        assert im.size == (SMALL.size, SMALL.size)
    with Image.open(split.label_path(cid)) as im:
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 1}


def test_deterministic_by_seed(tmp_path):
    cfg = SynthConfig(n_train=4, n_test=2, size=64, seed=7)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(a, cfg, workers=2, progress=False)
    synthesize(b, cfg, workers=1, progress=False)  # serial and parallel give the same bytes
    synthesize(c, SynthConfig(n_train=4, n_test=2, size=64, seed=8), workers=1, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_rerun_reuses_and_refuses_other_config(tmp_path):
    cfg = SynthConfig(n_train=2, n_test=1, size=48)
    first = synthesize(tmp_path / "d", cfg, workers=1, progress=False)
    assert not first.reused
    again = synthesize(tmp_path / "d", cfg, workers=1, progress=False)
    assert again.reused
    with pytest.raises(DataError, match="different config"):
        synthesize(tmp_path / "d", SynthConfig(n_train=3, n_test=1, size=48), workers=1, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        synthesize(tmp_path / "busy", cfg, workers=1, progress=False)
    with pytest.raises(DataError, match="was not written by cloudkd"):  # not even with overwrite (issue 29)
        synthesize(tmp_path / "busy", cfg, workers=1, overwrite=True, progress=False)
    assert (tmp_path / "busy" / "something.txt").read_text() == "x"
    other = SynthConfig(n_train=3, n_test=1, size=48)  # a generated dataset is the generator's to replace
    assert synthesize(tmp_path / "d", other, workers=1, overwrite=True, progress=False).reused is False
    assert synthesize(tmp_path / "d", other, workers=1, progress=False).reused


def test_unlabelled_pool_adds_chips_without_labels_at_train_locations_and_changes_nothing_else(tmp_path):
    """synth --n-unlabelled: a third split, unlabelled_features/ + unlabelled_metadata.csv and no labels, drawn at
    the train locations only, with ids of their own; the train and test chips are byte for byte those of the same
    dataset without the pool (their own random stream), so a study can add a pool to the demo's dataset."""
    from typer.testing import CliRunner

    from cloudkd.cli import app

    base = SynthConfig(n_train=5, n_test=3, size=48, seed=4)
    plain, pooled = tmp_path / "plain", tmp_path / "pooled"
    synthesize(plain, base, workers=1, progress=False)
    r = CliRunner().invoke(app, ["data", "synth", str(pooled), "--n-train", "5", "--n-test", "3", "--size", "48",
                                 "--seed", "4", "--n-unlabelled", "7", "--workers", "1", "--no-preview"])
    assert r.exit_code == 0, r.output
    assert "wrote 15 chips" in r.output
    for split in ("train", "test"):
        for sub in (f"{split}_features", f"{split}_labels", f"{split}_metadata.csv"):
            assert _digest(plain / sub) == _digest(pooled / sub) if (plain / sub).is_dir() else \
                (plain / sub).read_bytes() == (pooled / sub).read_bytes()
    assert not (pooled / "unlabelled_labels").exists()
    pool = resolve_split(pooled, "unlabelled")
    ids = pool.chip_ids()
    assert len(ids) == 7 and not set(ids) & set(resolve_split(pooled, "train").chip_ids() +
                                               resolve_split(pooled, "test").chip_ids())
    meta = pd.read_csv(pooled / "unlabelled_metadata.csv")
    train_locs, test_locs = split_locations(base)
    assert set(meta["location"]) <= {loc.name for loc in train_locs}
    for cid in ids:
        assert read_chip(pool.chip_dir(cid)).shape == (4, 48, 48)
    # the same config again is reused; a pool of another size is another dataset
    again = CliRunner().invoke(app, ["data", "synth", str(pooled), "--n-train", "5", "--n-test", "3", "--size",
                                     "48", "--seed", "4", "--n-unlabelled", "7", "--workers", "1", "--no-preview"])
    assert again.exit_code == 0 and "already holds this dataset" in again.output
    with pytest.raises(ValueError, match="n_unlabelled"):
        SynthConfig(n_train=5, n_unlabelled=-1)


def test_extra_train_chips_grow_the_train_split_and_keep_every_other_chip(tmp_path):
    """synth --n-extra-train: more labelled train chips at the train locations, from their own stream; every chip
    of the dataset without them (train, test and an unlabelled pool) is byte for byte the same, so a data-scaling
    study scores every size on one test split."""
    from typer.testing import CliRunner

    from cloudkd.cli import app

    base = SynthConfig(n_train=5, n_test=3, size=48, seed=4, n_unlabelled=2)
    plain, grown = tmp_path / "plain", tmp_path / "grown"
    synthesize(plain, base, workers=1, progress=False)
    r = CliRunner().invoke(app, ["data", "synth", str(grown), "--n-train", "5", "--n-test", "3", "--size", "48",
                                 "--seed", "4", "--n-unlabelled", "2", "--n-extra-train", "6", "--workers", "1",
                                 "--no-preview"])
    assert r.exit_code == 0, r.output
    assert "wrote 16 chips" in r.output
    for split in ("test", "unlabelled"):
        assert _digest(plain / f"{split}_features") == _digest(grown / f"{split}_features")
        assert (plain / f"{split}_metadata.csv").read_bytes() == (grown / f"{split}_metadata.csv").read_bytes()
    assert _digest(plain / "test_labels") == _digest(grown / "test_labels")
    first = resolve_split(plain, "train").chip_ids()
    train = resolve_split(grown, "train")
    ids = train.chip_ids()
    assert len(ids) == 11 and set(first) < set(ids)
    for cid in first:  # the first five, features and labels, unchanged
        assert _digest(plain / "train_features" / cid) == _digest(grown / "train_features" / cid)
        assert (plain / "train_labels" / f"{cid}.tif").read_bytes() == \
            (grown / "train_labels" / f"{cid}.tif").read_bytes()
    extra = sorted(set(ids) - set(first))
    assert not set(extra) & set(resolve_split(grown, "test").chip_ids() + resolve_split(grown, "unlabelled").chip_ids())
    meta = pd.read_csv(grown / "train_metadata.csv").set_index("chip_id")
    assert set(meta.loc[extra, "location"]) <= {loc.name for loc in split_locations(base)[0]}
    for cid in extra:  # labelled like every train chip
        assert read_label(train.label_path(cid)).shape == (48, 48)
    assert len(pd.read_csv(grown / "train_synth_info.csv")) == 11
    with pytest.raises(ValueError, match="n_extra_train"):
        SynthConfig(n_train=5, n_extra_train=-1)
    with pytest.raises(ValueError, match="need n_train > 0"):
        SynthConfig(n_train=0, n_test=2, n_extra_train=3)


def test_config_checks():
    with pytest.raises(ValueError, match="difficulty"):
        SynthConfig(difficulty=1.5)
    with pytest.raises(ValueError, match="size"):
        SynthConfig(size=8)
    with pytest.raises(ValueError, match="label_threshold"):
        SynthConfig(label_threshold=1.0)


def test_train_and_test_locations_disjoint_for_every_seed():
    for seed in range(3):
        train, test = split_locations(SynthConfig(seed=seed))
        assert len(test) == 8 and len(train) == 16
        assert not {l.name for l in train} & {l.name for l in test}
    plans = plan_dataset(SynthConfig(n_train=50, n_test=20))
    assert len({p.chip_id for p in plans}) == 70


def _cover_means(cover, seed=0, n=128):
    rng = np.random.default_rng(seed)
    sp = _Spectral(n)
    refl = render_cover(cover, rng, sp, sp.noise(rng, 3.2))
    return np.median(refl.reshape(4, -1), axis=1)  # B02, B03, B04, B08


def test_land_cover_spectra_behave_like_sentinel2():
    water, forest, crop = _cover_means("water"), _cover_means("forest"), _cover_means("cropland")
    desert, snow, urban = _cover_means("desert"), _cover_means("snow"), _cover_means("urban")
    ndvi = lambda m: (m[3] - m[2]) / (m[3] + m[2])  # noqa: E731
    assert ndvi(forest) > 0.6 and forest[3] > 0.25              # vegetation bright in NIR
    assert water[3] < water[2] and water[3] < 0.05              # water dark in NIR
    assert desert[2] > desert[1] > desert[0] and desert[2] > 0.2  # bright, reddish bare desert
    assert snow[:3].min() > 0.4 and snow[0] >= snow[3]          # snow bright in the visible
    assert 0.05 < urban[:3].mean() < 0.25 and abs(ndvi(urban)) < 0.3
    assert ndvi(forest) > ndvi(crop) > ndvi(urban)


def test_clouds_are_bright_white_shadows_dark_and_labels_follow_opacity():
    cfg = SynthConfig(size=256, label_style="opacity")
    seen = set()
    agree = np.zeros((2, 2))  # [opaque, clear] x [labelled as expected, pixels]
    dimmed = shaded = 0
    for seed in range(40):
        loc = LOCATIONS[seed % len(LOCATIONS)]
        out = render_chip(seed, loc, cfg)
        seen.add(out["regime"].split("-")[-1])
        refl = out["dn"].astype(np.float32) / 1e4
        alpha, label = out["alpha"], out["label"]
        valid = out["dn"].max(axis=0) > 0
        # labels mark cloud where (smoothed) opacity passes the threshold; the raw opacity agrees away from edges
        opaque, clear = valid & (alpha > cfg.label_threshold + 0.25), valid & (alpha < cfg.label_threshold - 0.2)
        agree += [[(label[opaque] == 1).sum(), opaque.sum()], [(label[clear] == 0).sum(), clear.sum()]]
        thick = (alpha > 0.95) & valid & (out["deck"] < 0.1)
        if thick.sum() > 500:
            m = np.median(refl[:, thick], axis=1)
            assert m[0] > 0.2 and m[0] >= m[3]                   # bright, not red / NIR-dominated
        deck = (alpha > 0.95) & valid & (out["deck"] > 0.9)
        if deck.sum() > 500:  # a deck in the shadow of higher cloud: dim, but still a flat cloud spectrum
            m = np.median(refl[:, deck], axis=1)
            assert 0.03 < m[0] < 0.3 and m[0] >= m[1] >= m[2] >= m[3]
            dimmed += 1
        shade = (out["shadow"] > 0.4) & (alpha < 0.02) & valid
        lit = (out["shadow"] < 0.02) & (alpha < 0.02) & valid
        if shade.sum() > 500 and lit.sum() > 500:
            for c in np.unique(out["cover"][shade]):
                a, b = shade & (out["cover"] == c), lit & (out["cover"] == c)
                # shadows darken the ground, wherever a 40 % shadow is more than the haze and noise added over it
                # (dark water under the darker ground gain is not: 0.036 against 0.037 in B08)
                if a.sum() > 200 and b.sum() > 200 and np.median(refl[3, b]) > 0.05:
                    assert np.median(refl[3, a]) < np.median(refl[3, b])
                    shaded += 1
    assert {"clear", "overcast", "thick", "thin", "mixed"} <= seen
    assert agree[0, 0] / agree[0, 1] > 0.98 and agree[1, 0] / agree[1, 1] > 0.98
    assert dimmed >= 2 and shaded >= 10, (dimmed, shaded)


def test_annotator_labels_cover_the_cloud_and_stay_off_clear_ground_far_from_it():
    from scipy import ndimage

    covered = np.zeros(2)
    far_clear = np.zeros(2)
    for seed in range(40):
        out = render_chip(seed, LOCATIONS[seed % len(LOCATIONS)], SynthConfig(size=256))
        valid = out["dn"].max(axis=0) > 0
        label, alpha = out["label"] > 0, out["alpha"]
        cloud = valid & (alpha > 0.6)  # dense cloud (the annotator's level is 0.5) is drawn whatever it lies over
        covered += [label[cloud].sum(), cloud.sum()]
        if (alpha >= 0.1).any():  # well beyond the margins (a median of 10 px) from the outlined cloud
            far = valid & (ndimage.distance_transform_edt(alpha < 0.1) > 45)
            far_clear += [(~label[far]).sum(), far.sum()]
    assert covered[0] / covered[1] > 0.995
    assert far_clear[1] > 20_000 and far_clear[0] / far_clear[1] > 0.97


def test_difficulty_adds_bright_ground_and_thin_cloud():
    def stats(d):
        bright, thin = 0, 0
        for seed in range(24):
            out = render_chip(seed, LOCATIONS[seed % len(LOCATIONS)], SynthConfig(size=128, difficulty=d))
            bright += np.isin(out["cover"], [COVERS.index(c) for c in ("snow", "desert", "urban")]).mean()
            thin += ((out["alpha"] > 0.05) & (out["alpha"] < 0.6)).mean()
        return bright, thin

    easy, hard = stats(0.0), stats(1.0)
    assert hard[0] > 1.5 * easy[0]
    assert hard[1] > easy[1]


def test_cloud_fraction_varies_like_the_challenge(small_data):
    info = pd.read_csv(small_data / "train_synth_info.csv")
    frac = info.cloud_fraction
    assert (frac < 0.02).any() and (frac > 0.9).any()
    assert 0.2 < frac.mean() < 0.8
    assert math.isclose(frac.iloc[0], read_label(resolve_split(small_data).label_path(info.chip_id[0])).mean(),
                        abs_tol=1e-4)


def test_reflectance_ranges_comparable_to_real_chips(small_data, real_chips):
    """Generated clear and cloudy pixels span the same ranges as the real chips (see data/README.md)."""
    real = np.stack([read_chip(d) for d in sorted((real_chips / "test_features").iterdir())])
    split = resolve_split(small_data)
    gen = np.stack([read_chip(split.chip_dir(c)) for c in split.chip_ids()])
    for b in range(4):
        r5, r50, r95 = np.percentile(real[:, b], [5, 50, 95])
        g5, g50, g95 = np.percentile(gen[:, b], [5, 50, 95])
        assert 0.25 < g50 / r50 < 4.0, (b, g50, r50)
        assert g95 > 0.5 * r95 and g5 < 3 * r5 + 0.02
    assert np.percentile(real, 99.9) < 1.6 and np.percentile(gen, 99.9) < 1.6


def test_ground_gain_darkens_the_ground_under_the_same_clouds(tmp_path):
    """ground_gain_min: each chip's ground is scaled by its own gain in [min, 1] (its own stream), and nothing else
    changes: the same opacity, the same opaque cloud tops; clear ground darker by about the gain (haze, added
    after, can only lift the ratio); 1.0 writes what it wrote before, and a dataset's stamp records the gain."""
    import json

    from cloudkd.data.synth.sentinel2 import ground_gain, recorded_config

    loc = LOCATIONS[15]  # Chifunfu: lake, grassland and cropland
    seen = []
    for seed in (3, 8, 21):
        gain = ground_gain(seed, 0.4)
        seen.append(gain)
        assert 0.4 <= gain < 1.0 and ground_gain(seed, 1.0) == 1.0
        old = render_chip(seed, loc, SynthConfig(size=128, difficulty=0.0, ground_gain_min=1.0))
        new = render_chip(seed, loc, SynthConfig(size=128, difficulty=0.0))  # the default: 0.4
        assert np.array_equal(old["alpha"], new["alpha"]) and np.array_equal(old["cover"], new["cover"])
        a, b = old["dn"].astype(float), new["dn"].astype(float)
        opaque = old["alpha"] >= 0.999
        if opaque.any():  # a cloud top hides the ground: the same reflectance to the DN
            assert np.abs(a[:, opaque] - b[:, opaque]).max() <= 1
        clear = (old["alpha"] == 0) & (old["shadow"] < 0.01) & (a[:3].mean(0) > 300)
        assert clear.sum() > 500
        ratio = np.median(b[:3, clear].sum(0) / a[:3, clear].sum(0))
        assert gain - 0.01 <= ratio <= gain + 0.1, (seed, gain, ratio)
    assert max(seen) - min(seen) > 0.1  # a gain per chip, not one for all
    assert SynthConfig().ground_gain_min == 0.4
    with pytest.raises(ValueError, match="ground_gain_min"):
        SynthConfig(ground_gain_min=0.0)
    with pytest.raises(ValueError, match="ground_gain_min"):
        SynthConfig(ground_gain_min=float("nan"))
    # the stamp: recorded when used, read back as written
    for g in (1.0, 0.5):
        root = tmp_path / f"g{g}"
        synthesize(root, SynthConfig(n_train=2, n_test=0, size=48, ground_gain_min=g), workers=1, progress=False)
        assert recorded_config(root).ground_gain_min == g
        assert ("ground_gain_min" in json.loads((root / "synth.json").read_text())["config"]) == (g != 1.0)
    # a dataset generated before the gain existed (its stamp lacks the field) is one with the gain off: it reads back
    # as 1.0, a 1.0 config reuses it, and the default (0.4) does not take it for its own
    old_root = tmp_path / "g1.0"
    before = (old_root / "train_features").stat().st_mtime_ns
    assert synthesize(old_root, SynthConfig(n_train=2, n_test=0, size=48, ground_gain_min=1.0), workers=1,
                      progress=False).reused
    assert recorded_config(old_root).ground_gain_min == 1.0
    with pytest.raises(DataError, match="different config"):
        synthesize(old_root, SynthConfig(n_train=2, n_test=0, size=48), workers=1, progress=False)
    assert (old_root / "train_features").stat().st_mtime_ns == before


def test_cli_ground_gain_min_reaches_the_config_and_refuses_bad_values(tmp_path):
    """synth --ground-gain-min: the option is the config's (default 0.4 recorded in the stamp, 1 the generator
    before: equal to a dataset generated with the config at 1); 0 or above 1 is a one-line error, exit 2."""
    import json

    from typer.testing import CliRunner

    from cloudkd.cli import app

    args = ["--n-train", "3", "--n-test", "1", "--size", "48", "--seed", "2", "--workers", "1", "--no-preview"]
    r = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "default"), *args])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "default" / "synth.json").read_text())["config"]["ground_gain_min"] == 0.4
    r = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "off"), *args, "--ground-gain-min", "1"])
    assert r.exit_code == 0, r.output
    synthesize(tmp_path / "api", SynthConfig(n_train=3, n_test=1, size=48, seed=2, ground_gain_min=1.0), workers=1,
               progress=False)
    for sub in ("train_features", "test_features"):
        for f in sorted((tmp_path / "api" / sub).rglob("*.tif")):
            assert f.read_bytes() == (tmp_path / "off" / f.relative_to(tmp_path / "api")).read_bytes()
    d = sorted((tmp_path / "default" / "train_features").rglob("B04.tif"))[0]
    assert d.read_bytes() != (tmp_path / "off" / d.relative_to(tmp_path / "default")).read_bytes()
    for bad in ("0", "1.5", "nan"):
        out = tmp_path / f"bad{bad}"
        r = CliRunner().invoke(app, ["data", "synth", str(out), *args, "--ground-gain-min", bad])
        assert r.exit_code == 2 and "--ground-gain-min" in r.output and "Traceback" not in r.output, r.output
        assert not out.exists()
