"""The generator's label rules on hand-made opacity fields, and the label-style measurements behind them."""

import numpy as np
import pytest
from scipy import ndimage

from cloudkd.data.synth.annotator import (AnnotatorStyle, annotator_label, drop_small, fill_small_holes,
                                          margin_field, opacity_label, seen_cloud)
from cloudkd.data.labelstyle import (chip_style, components, label_by_distance, left_out_cloud, outline_length,
                                     roughness, signed_margin, summarise)
from cloudkd.data.synth.catalogue import LOCATIONS
from cloudkd.data.synth.sentinel2 import SynthConfig, render_chip

#: no randomness in the margin, no smoothing, no size rules: each property can be tested on its own
PLAIN = AnnotatorStyle(level=0.5, margin=10.0, margin_spread=0.0, margin_wobble=0.0, smooth=0.0, min_hole=0,
                       min_blob=0)


def disc(n=200, r=30.0, cy=100, cx=100, value=1.0):
    yy, xx = np.mgrid[0:n, 0:n]
    return (np.hypot(yy - cy, xx - cx) <= r).astype(np.float32) * value


def rng():
    return np.random.default_rng(0)


def test_margin_puts_the_outline_a_fixed_distance_outside_the_cloud():
    alpha = disc(r=30)
    label = annotator_label(alpha, rng(), PLAIN)
    assert label[alpha > 0].all(), "every cloud pixel is labelled"
    # the label is the disc grown by the margin: radius 30 + 10 (the opacity rule at 0.3 stays at ~30.8)
    radius = np.sqrt(label.sum() / np.pi)
    assert 39.5 < radius < 41.5
    assert 30.0 < np.sqrt(opacity_label(alpha, 0.3).sum() / np.pi) < 31.8
    # measured like the real labels: outline distances from the cloud edge are ~10 px
    d = signed_margin(label, alpha > 0)
    assert 9.0 < np.median(d) < 11.5 and d.min() > 8.0


def test_thin_cloud_is_outlined_where_it_shows_and_not_where_it_does_not():
    veil = disc(r=30, value=0.3)  # semi-transparent: below the dense-cloud level
    over_water = veil * (0.5 - 0.05)  # what it adds to the visible reflectance over dark ground
    over_snow = veil * (0.5 - 0.8)  # over brighter ground it darkens the scene a little: it does not show
    faint = veil * (0.5 - 0.2)  # over brighter ground: +0.09, below the 0.1 an annotator draws
    assert not annotator_label(veil, rng(), PLAIN).any(), "without knowing what shows, a veil is not drawn"
    assert annotator_label(veil, rng(), PLAIN, over_water)[100, 100]
    assert not annotator_label(veil, rng(), PLAIN, over_snow).any()
    assert not annotator_label(veil, rng(), PLAIN, faint).any()
    assert not opacity_label(veil, 0.3 + 1e-3).any(), "the old rule at its level ignores it everywhere"
    # dense cloud is drawn whatever it lies over, even a deck darker than the ground
    assert annotator_label(disc(r=30), rng(), PLAIN, -0.1 * disc(r=30))[100, 100]


def test_smoothing_removes_the_fine_detail_of_a_ragged_outline():
    n = 200
    yy, xx = np.mgrid[0:n, 0:n]
    ang = np.arctan2(yy - 100, xx - 100)
    ragged = (np.hypot(yy - 100, xx - 100) <= 40 + 4 * np.sign(np.sin(16 * ang))).astype(np.float32)  # 16 teeth

    def draw(smooth):
        return annotator_label(ragged, rng(), AnnotatorStyle(margin=2.0, margin_spread=0, margin_wobble=0,
                                                             smooth=smooth, min_hole=0, min_blob=0))

    rough, smooth = draw(0.0), draw(3.0)
    assert smooth[seen_cloud(ragged, AnnotatorStyle())].all(), "smoothing never uncovers the cloud it outlines"
    assert outline_length(smooth) < 0.8 * outline_length(rough)
    assert roughness(smooth) < roughness(rough) - 0.25
    assert abs(int(smooth.sum()) - int(rough.sum())) < 0.05 * rough.sum()  # the same cloud, a smoother outline


def test_small_holes_are_filled_and_large_ones_kept():
    ring = disc(r=60) - disc(r=5)  # a small hole at the centre
    big = disc(r=60) - disc(r=20)
    style = AnnotatorStyle(margin=0.0, margin_spread=0, margin_wobble=0, smooth=0, min_hole=100, min_blob=0)
    assert annotator_label(ring, rng(), style)[100, 100], "a hole of ~80 px is filled"
    assert not annotator_label(big, rng(), style)[100, 100], "a hole of ~1,250 px is kept"
    m = big > 0
    assert fill_small_holes(m, 2000)[100, 100] and not fill_small_holes(m, 1000)[100, 100]
    # background touching the border is never a hole
    edge = np.zeros((50, 50), bool)
    edge[:, 10:] = True
    assert not fill_small_holes(edge, 10_000)[:, :10].any()


def test_tiny_blobs_are_dropped_and_real_clouds_kept():
    alpha = np.zeros((200, 200), np.float32)
    alpha[20:23, 20:23] = 1.0  # a 9-px speck
    alpha[100:110, 100:110] = 1.0  # a 100-px cloud
    style = AnnotatorStyle(margin=5.0, margin_spread=0, margin_wobble=0, smooth=0, min_hole=0, min_blob=30)
    label = annotator_label(alpha, rng(), style)
    assert not label[10:35, 10:35].any()
    assert label[100:110, 100:110].all() and label[97, 105]
    keep = drop_small(alpha > 0, 30)
    assert keep.sum() == 100


def test_margin_field_follows_the_style():
    flat = AnnotatorStyle(margin=10.0, margin_spread=0.5, margin_wobble=0.0)
    chip = [float(margin_field(np.random.default_rng(s), (64, 64), flat)[0, 0]) for s in range(300)]
    assert 9.0 < np.median(chip) < 11.0  # a log-normal draw per chip around the median margin
    assert np.std(np.log(chip)) == pytest.approx(0.5, abs=0.06)
    style = AnnotatorStyle(margin=10.0, margin_spread=0.5, margin_wobble=0.4)
    field = margin_field(np.random.default_rng(1), (256, 256), style)
    assert field.std() > 0 and np.abs(np.diff(field, axis=1)).max() < 0.2 * field.mean()  # smooth along outlines
    assert (margin_field(np.random.default_rng(1), (256, 256), style) == field).all()


def test_style_checks():
    with pytest.raises(ValueError, match="level"):
        AnnotatorStyle(level=0.0)
    with pytest.raises(ValueError, match="margin"):
        AnnotatorStyle(margin=-1)
    with pytest.raises(ValueError, match="label_style"):
        SynthConfig(label_style="sloppy")
    # the style survives the round trip through synth.json (a dict)
    assert SynthConfig(annotator={"margin": 7.0}).annotator == AnnotatorStyle(margin=7.0)


def test_both_rules_label_the_same_image_and_the_old_rule_is_still_selectable():
    loc = LOCATIONS[15]
    new = render_chip(11, loc, SynthConfig(size=128))
    old = render_chip(11, loc, SynthConfig(size=128, label_style="opacity"))
    assert (new["dn"] == old["dn"]).all() and (new["alpha"] == old["alpha"]).all()
    inner = np.zeros(old["label"].shape, bool)  # drawn on the padded canvas: compare away from the edge,
    inner[8:-8, 8:-8] = True  # and away from nodata (labelled clear)
    inner &= old["dn"].max(axis=0) > 0
    assert (old["label"][inner] == opacity_label(old["alpha"], 0.3)[inner]).mean() > 0.99
    if old["label"].any():
        assert new["label"][old["label"] > 0].mean() > 0.99  # generous: the annotator covers the dense cloud
        assert new["label"].sum() > old["label"].sum()
    again = render_chip(11, loc, SynthConfig(size=128))
    assert (again["label"] == new["label"]).all()


# ------------------------------------------------------------------------------------------------------------
# the label ceiling (benchmarks/label_ceiling.py)
# ------------------------------------------------------------------------------------------------------------
def test_ceiling_labels_rebuild_the_dataset_labels_and_other_streams_draw_other_outlines(tmp_path):
    from cloudkd.data import read_chip_dn, read_label, resolve_split
    from cloudkd.data.synth.ceiling import DATASET, ORACLE, ceiling_labels, median_margin_style
    from cloudkd.data.synth.sentinel2 import chip_label, plan_dataset, recorded_config, synthesize

    cfg = SynthConfig(n_train=1, n_test=4, size=128, seed=3, p_nodata=0.5)  # nodata wedges on some chips
    synthesize(tmp_path / "d", cfg, workers=1, progress=False)
    assert recorded_config(tmp_path / "d") == cfg
    split = resolve_split(tmp_path / "d", "test")
    locs = {loc.name: loc for loc in LOCATIONS}
    differ = wedges = 0
    for p in (p for p in plan_dataset(cfg) if p.split == "test"):
        labels = ceiling_labels(p.seed, locs[p.location], cfg, [2, 3])
        disk = read_label(split.label_path(p.chip_id))
        assert labels[DATASET].dtype == disk.dtype == np.uint8 and np.array_equal(labels[DATASET], disk)
        nodata = (read_chip_dn(split.chip_dir(p.chip_id)) == 0).all(axis=0)
        wedges += nodata.any()
        for key in (2, 3, ORACLE):  # same crop and nodata handling as the dataset's label
            assert labels[key].shape == disk.shape and not labels[key][nodata].any()
        if disk.any() and not disk[~nodata].all():  # a cloudy chip with an outline: another draw, another outline
            differ += not np.array_equal(labels[2], disk)
            assert not np.array_equal(labels[2], labels[3])
        # the oracle's margin is fixed: any stream draws the same label
        out = render_chip(p.seed, locs[p.location], cfg, canvas=True)
        assert np.array_equal(chip_label(out["canvas"], cfg, stream=9, style=median_margin_style(cfg.annotator)),
                              labels[ORACLE])
    assert differ >= 2 and wedges >= 1
    with pytest.raises(ValueError):
        ceiling_labels(p.seed, locs[p.location], cfg, [1, 2])  # the dataset's own stream is no other annotator


def test_rebuild_plans_and_check_rebuilt_label_refuse_what_is_not_the_dataset(tmp_path):
    """benchmarks/label_ceiling.py and error_anatomy.py re-render a dataset's test chips from its plans: the plans
    must be the split's chips, and each re-rendered label must be the label file."""
    from cloudkd.common.errors import DataError
    from cloudkd.data import resolve_split
    from cloudkd.data.synth.ceiling import check_rebuilt_label, rebuild_plans
    from cloudkd.data.synth.sentinel2 import synthesize

    cfg = SynthConfig(n_train=1, n_test=3, size=64, seed=5)
    synthesize(tmp_path / "d", cfg, workers=1, progress=False)
    split = resolve_split(tmp_path / "d", "test")
    plans = rebuild_plans(cfg, split)
    assert [p.chip_id for p in plans] == split.chip_ids() and len(rebuild_plans(cfg, split, chips=2)) == 2
    locs = {loc.name: loc for loc in LOCATIONS}
    first = plans[0]
    label = render_chip(first.seed, locs[first.location], cfg)["label"]
    check_rebuilt_label(split, first.chip_id, label)  # the dataset's own chip: no error
    with pytest.raises(DataError, match=f"{first.chip_id}.*1 pixels.*not the chip rebuilt"):
        check_rebuilt_label(split, first.chip_id, np.where(np.arange(label.size).reshape(label.shape) == 0,
                                                           1 - label, label).astype(label.dtype))
    with pytest.raises(DataError, match="not the ones its synth.json plans"):
        rebuild_plans(SynthConfig(n_train=1, n_test=3, size=64, seed=6), split)  # another config's chips
    with pytest.raises(DataError, match="no test chips"):
        rebuild_plans(SynthConfig(n_train=1, n_test=0, size=64, seed=5))
    with pytest.raises(DataError, match="not the chip rebuilt"):  # same pixels, another dtype than a label's
        check_rebuilt_label(split, first.chip_id, label.astype(np.int64))


def test_ceiling_rows_are_global_scores_against_the_dataset_label():
    from cloudkd.data.synth.ceiling import DATASET, ORACLE, ceiling_rows, median_margin_style

    m = lambda *px: np.array(px, np.uint8)  # noqa: E731
    a = {DATASET: m(1, 1, 1, 1, 0, 0, 0, 0), 2: m(1, 1, 1, 0, 1, 0, 0, 0), 3: m(1, 1, 0, 0, 0, 0, 0, 0),
         ORACLE: m(1, 1, 1, 1, 1, 1, 0, 0)}
    b = {DATASET: m(0, 0, 0, 0), 2: m(0, 0, 0, 0), 3: m(0, 0, 0, 1), ORACLE: m(0, 0, 0, 0)}
    rows = {r["name"]: r for r in ceiling_rows([a, b])}
    # stream 2: tp 3, fp 1, fn 1; stream 3: tp 2, fp 1 (chip b: global, not a mean of chips), fn 2; oracle: 4, 2, 0
    pair, mean, oracle = rows["two_annotators"], rows["two_annotators_mean"], rows["oracle_median_margin"]
    assert (pair["chips"], pair["draws"], mean["draws"]) == (2, 1, 2)
    assert (pair["jaccard"], pair["precision"], pair["recall"], pair["sd"]) == (3 / 5, 3 / 4, 3 / 4, None)
    assert mean["jaccard"] == pytest.approx(0.5) and mean["sd"] == pytest.approx(0.1 * 2 ** 0.5)  # sd of 0.6, 0.4
    assert mean["precision"] == pytest.approx((3 / 4 + 2 / 3) / 2) and mean["recall"] == pytest.approx(5 / 8)
    assert (oracle["jaccard"], oracle["precision"], oracle["recall"]) == pytest.approx((4 / 6, 4 / 6, 1.0))
    # the median margin: the style's margin everywhere, on every chip
    assert (margin_field(rng(), (130, 70), median_margin_style(AnnotatorStyle(margin=9.0))) == 9.0).all()


def test_error_counts_split_a_models_errors_into_margin_noise_and_its_own():
    """benchmarks/error_anatomy.py: on a hand-made row of 100 px, every wrong pixel lands in exactly one class."""
    from cloudkd.data.synth.ceiling import ERROR_CLASSES, error_counts

    row = lambda *spans: np.isin(np.arange(100), np.concatenate([np.arange(a, b + 1) for a, b in spans]))[None]  # noqa: E731
    label, oracle = row((10, 29)), row((12, 29))  # the label's annotator drew a 2 px wider margin on the left
    pred = row((12, 19), (21, 31), (35, 35), (90, 90))
    alpha = np.zeros((1, 100))
    alpha[0, 15:26], alpha[0, 26:32] = 0.8, 0.2
    c = error_counts(pred, label, oracle, alpha)
    assert (c["union"], c["inter"], c["o_union"], c["o_inter"], c["oo_union"], c["oo_inter"]) == (24, 17, 22, 17,
                                                                                                   20, 18)
    assert {k: c[k] for k in ERROR_CLASSES if c[k]} == {
        "margin_fn": 2,  # 10-11: the model draws the oracle's outline there
        "model_fp_thin": 2,  # 30-31: thin cloud neither label nor oracle draws
        "model_fp_outline": 1, "model_fp_away": 1,  # clear ground 6 px and 61 px from the oracle's cloud
        "model_fn_dense": 1}  # 20: a hole in dense cloud
    assert sum(c[k] for k in ERROR_CLASSES) == c["union"] - c["inter"]
    none = error_counts(row((50, 50)), np.zeros((1, 100), bool), np.zeros((1, 100), bool), np.zeros((1, 100)))
    assert none["model_fp_away"] == 1 and none["model_fp_outline"] == 0  # no oracle cloud: nothing is near it


# ------------------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------------------
def test_signed_margin_is_negative_when_the_label_cuts_into_the_cloud():
    cloud = disc(r=40) > 0
    tight = disc(r=32) > 0
    d = signed_margin(tight, cloud)
    assert -9.5 < np.median(d) < -6.5
    assert len(signed_margin(cloud, np.zeros_like(cloud))) == 0


def test_label_probability_by_distance_and_components():
    cloud = disc(r=20) > 0
    label = disc(r=30) > 0
    pos, tot = label_by_distance(label, cloud)
    p = pos / np.maximum(tot, 1)
    assert p[0] == 1.0 and p[3] < 0.2 and p[-2] == 0.0  # all labelled within 2 px, none beyond 80
    blobs, holes = components(disc(r=30) - disc(r=10) > 0)
    assert len(blobs) == 1 and len(holes) == 1 and 300 < holes[0] < 330
    assert list(left_out_cloud(label, cloud | (disc(r=3, cy=180, cx=180) > 0))) == [29]


def test_chip_style_on_a_hand_made_chip():
    refl = np.full((4, 200, 200), 0.08, np.float32)
    refl[:, disc(r=25) > 0] = 0.6
    label = disc(r=35) > 0
    st = chip_style(refl, label)
    assert st["cloud_in_label"] == 1.0 and 0.45 < st["label_is_cloud"] < 0.55
    assert 9.0 < np.median(st["margin"]) < 11.0
    s = summarise([st, chip_style(refl, np.ones((200, 200), bool))])
    assert s["n_chips"] == 1 and 9.0 < s["margin_p50"] < 11.0  # a full label has no outline to measure
    # bright ground known not to be cloud is left out of the visible cloud
    assert np.isnan(chip_style(refl, label, not_cloud=np.ones((200, 200), bool))["cloud_in_label"])
