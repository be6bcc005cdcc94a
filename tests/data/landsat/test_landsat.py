"""Landsat-8 / 38-Cloud: the reader, the import, stitching, scene metrics, the generator and every command on it."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from cloudkd.cli import app
from cloudkd.common.errors import DataError
from cloudkd.data.chips import load_index, read_chip_dn, read_label, write_band, write_mask
from cloudkd.data.roots import resolve_split
from cloudkd.data.landsat.reader import (PATCH, PatchName, cut_scene, dn_to_landsat_dn, grid_for, import_38cloud,
                                         landsat_dn_to_dn, padding, parse_patch_name, read_gt, read_patch_table,
                                         stitch, write_gt)
from cloudkd.data.landsat.synth import Landsat38Config, synthesize_38cloud
from cloudkd.data.landsat.scenes import score_scenes

SCENE_A = "LC08_L1TP_029032_20160720_20170222_01_T1"
SCENE_B = "LC08_L1TP_064015_20160614_20170221_01_T1"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------------------------------------------
# names, digital numbers, ground truth
# ----------------------------------------------------------------------------------------------------------------
def test_patch_names_parse_like_the_dataset_names_them():
    p = parse_patch_name(f"red_patch_185_10_by_7_{SCENE_A}.TIF")
    assert (p.n, p.row, p.col, p.scene) == (185, 10, 7, SCENE_A)
    assert p.name == f"patch_185_10_by_7_{SCENE_A}"
    assert p.file("nir") == f"nir_patch_185_10_by_7_{SCENE_A}.TIF"
    assert parse_patch_name(p.name) == p  # the CSV of non-empty patches lists bare names
    for bad in (f"red_patch_1_0_by_1_{SCENE_A}.TIF", "B02.tif", f"red_patch_x_1_by_1_{SCENE_A}.TIF"):
        with pytest.raises(DataError, match="not a 38-Cloud patch name"):
            parse_patch_name(bad)


def test_landsat_digital_numbers_map_to_reflectance_x_10000():
    dn = np.array([0, 5000, 10000, 30000, 55000, 65535], np.uint16)
    # reflectance = 2e-5 * DN - 0.1; DN 0 is nodata and stays 0; valid pixels never become nodata
    assert landsat_dn_to_dn(dn).tolist() == [0, 1, 1000, 5000, 10000, 12107]
    ours = np.arange(0, 65536, 7, dtype=np.uint16)
    ours = ours[(ours == 0) | (ours < 12000)]
    back = landsat_dn_to_dn(dn_to_landsat_dn(ours))
    assert np.abs(back.astype(int) - ours.astype(int)).max() <= 1
    assert (back[ours == 0] == 0).all()


def test_ground_truth_0_255_reads_as_0_1_and_bad_values_name_the_file(tmp_path):
    arr = np.zeros((5, 6), np.uint8)
    arr[1:3, 2:5] = 1
    write_gt(tmp_path / "gt.TIF", arr)
    assert set(np.unique(tifffile.imread(tmp_path / "gt.TIF")).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_gt(tmp_path / "gt.TIF"), arr)
    tifffile.imwrite(tmp_path / "bad.TIF", np.full((5, 6), 7, np.uint8))
    with pytest.raises(DataError, match=r"bad\.TIF.*outside"):
        read_gt(tmp_path / "bad.TIF")


# ----------------------------------------------------------------------------------------------------------------
# scene <-> patches
# ----------------------------------------------------------------------------------------------------------------
# 38-Cloud: a scene is zero-padded to whole 384-px patches, the padding split evenly between the two sides of each
# axis with the odd pixel at the bottom/right. Worked by hand: (rows, cols), (top, bottom), (left, right).
PADDING_CASES = [
    ((700, 1000), (2, 3), (34, 34), (76, 76)),      # 768 - 700 = 68; 1152 - 1000 = 152
    ((384, 384), (1, 1), (0, 0), (0, 0)),
    ((385, 20), (2, 1), (191, 192), (182, 182)),    # 768 - 385 = 383: odd, one more at the bottom; 384 - 20 = 364
    ((1150, 769), (3, 3), (1, 1), (191, 192)),      # 1152 - 1150 = 2; 1152 - 769 = 383
    ((383, 1), (1, 1), (0, 1), (191, 192)),         # 1 px short: all of it at the bottom
    ((769, 767), (3, 2), (191, 192), (0, 1)),       # 1152 - 769 = 383; 768 - 767 = 1
]


@pytest.mark.parametrize("shape,grid,vertical,horizontal", PADDING_CASES)
def test_padding_by_hand_and_cut_stitch_round_trip(shape, grid, vertical, horizontal):
    h, w = shape
    rows, cols = grid
    assert grid_for(shape) == grid
    assert padding(shape, grid) == (vertical[0], horizontal[0])
    assert rows * PATCH == h + sum(vertical) and cols * PATCH == w + sum(horizontal)
    rng = np.random.default_rng(h * w)
    scene = rng.integers(1, 2 ** 16, shape, dtype=np.uint16)  # never 0: padding is where the zeros are
    patches = cut_scene(scene, SCENE_A)
    # row-major numbering from 1, as in the dataset's names
    assert sorted((p.row, p.col, p.n) for p in patches) == \
        [(r, c, (r - 1) * cols + c) for r in range(1, rows + 1) for c in range(1, cols + 1)]
    assert all(a.shape == (PATCH, PATCH) for a in patches.values())
    canvas = np.block([[patches[PatchName(SCENE_A, r, c, (r - 1) * cols + c)] for c in range(1, cols + 1)]
                       for r in range(1, rows + 1)])
    top, bottom = vertical
    left, right = horizontal
    assert (canvas[:top] == 0).all() and (canvas[rows * PATCH - bottom:] == 0).all()
    assert (canvas[:, :left] == 0).all() and (canvas[:, cols * PATCH - right:] == 0).all()
    np.testing.assert_array_equal(canvas[top:top + h, left:left + w], scene)
    assert (canvas > 0).sum() == h * w
    # patch -> scene -> patch
    back = stitch(patches, shape, grid)
    np.testing.assert_array_equal(back, scene)
    again = cut_scene(back, SCENE_A)
    assert all(np.array_equal(again[p], patches[p]) for p in patches)


def test_padding_in_a_larger_grid_and_small_patches_by_hand():
    # a grid larger than needed (38-Cloud's scene tables may say so): 3 x 2 patches around 700 x 700
    assert padding((700, 700), (3, 2)) == (226, 34)  # 1152 - 700 = 452 -> 226 + 226; 768 - 700 = 68 -> 34 + 34
    with pytest.raises(ValueError, match="cannot hold"):
        padding((700, 700), (1, 2))
    # 4-px patches: a 5 x 3 scene in a 2 x 1 grid, padded by 1 row above, 2 below, 1 column at the right
    scene = np.arange(1, 16, dtype=np.uint8).reshape(5, 3)
    assert padding((5, 3), (2, 1), patch=4) == (1, 0)
    p = cut_scene(scene, SCENE_A, patch=4)
    assert sorted(p) == [PatchName(SCENE_A, 1, 1, 1), PatchName(SCENE_A, 2, 1, 2)]
    np.testing.assert_array_equal(p[PatchName(SCENE_A, 1, 1, 1)], [[0, 0, 0, 0],
                                                                    [1, 2, 3, 0],
                                                                    [4, 5, 6, 0],
                                                                    [7, 8, 9, 0]])
    np.testing.assert_array_equal(p[PatchName(SCENE_A, 2, 1, 2)], [[10, 11, 12, 0],
                                                                    [13, 14, 15, 0],
                                                                    [0, 0, 0, 0],
                                                                    [0, 0, 0, 0]])
    np.testing.assert_array_equal(stitch(p, (5, 3), (2, 1), patch=4), scene)
    # a (bands, H, W) stack is cut band by band alike
    stack = np.stack([scene, scene + 100])
    q = cut_scene(stack, SCENE_A, patch=4)
    np.testing.assert_array_equal(q[PatchName(SCENE_A, 2, 1, 2)][1, :2, :3], scene[3:] + 100)


def test_stitch_leaves_absent_patches_zero_and_rejects_misfits():
    scene = np.ones((700, 700), np.uint8)
    patches = cut_scene(scene, SCENE_A)
    del patches[PatchName(SCENE_A, 2, 2, 4)]
    out = stitch(patches, scene.shape, (2, 2))
    top, left = padding(scene.shape, (2, 2))
    assert out[PATCH - top:, PATCH - left:].sum() == 0
    assert out[:PATCH - top].all() and out[:, :PATCH - left].all()
    with pytest.raises(DataError, match="outside the scene's 2x2 grid"):
        stitch({PatchName(SCENE_A, 3, 1, 5): np.zeros((PATCH, PATCH), np.uint8)}, scene.shape, (2, 2))


# ----------------------------------------------------------------------------------------------------------------
# a hand-made 38-Cloud root
# ----------------------------------------------------------------------------------------------------------------
def _write_split(d, split, scenes, with_patch_gt):
    """Write whole scenes {scene: (dn (4,H,W) Landsat DN, truth (H,W))} as 38-Cloud patches under ``d``."""
    for scene, (dn, truth) in scenes.items():
        for p, arr in cut_scene(dn, scene).items():
            for b, band in enumerate(("blue", "green", "red", "nir")):
                write_band(d / f"{split}_{band}" / p.file(band), np.ascontiguousarray(arr[b]))
        if with_patch_gt:
            for p, arr in cut_scene(truth, scene).items():
                write_gt(d / f"{split}_gt" / p.file("gt"), arr)
        else:
            write_gt(d / "Entire_scene_gts" / f"edited_corrected_gts_{scene}.TIF", truth)


def _scene(h, w, seed, empty_right=False):
    rng = np.random.default_rng(seed)
    dn = rng.integers(8000, 40000, (4, h, w), dtype=np.uint16)
    truth = np.zeros((h, w), np.uint8)
    truth[: h // 2] = 1
    if empty_right:  # the right-hand column of a 2-column grid holds nodata only
        cut = PATCH - (2 * PATCH - w) // 2
        dn[:, :, cut:] = 0
        truth[:, cut:] = 0
    return dn, truth


@pytest.fixture()
def hand_root(tmp_path):
    root = tmp_path / "38cloud"
    train = {SCENE_A: _scene(700, 700, 0, empty_right=True), SCENE_B: _scene(400, 500, 1)}
    test = {SCENE_A: _scene(600, 720, 2, empty_right=True)}
    _write_split(root / "38-Cloud_training", "train", train, with_patch_gt=True)
    _write_split(root / "38-Cloud_test", "test", test, with_patch_gt=False)
    return root, train, test


def test_import_writes_the_on_cloud_n_layout_without_empty_patches(hand_root, tmp_path):
    root, train, test = hand_root
    r = import_38cloud(root, tmp_path / "imp", progress=False)
    assert r.n_patches == {"train": 6, "test": 2} and r.n_empty == {"train": 2, "test": 2}
    assert r.n_scenes == {"train": 2, "test": 1}
    idx = load_index(resolve_split(r.root, "train"))
    assert set(idx.location) == {SCENE_A, SCENE_B}  # folds group by scene
    assert idx.datetime[idx.location == SCENE_A].iloc[0] == "2016-07-20T00:00:00Z"
    # bands in B02, B03, B04, B08 = blue, green, red, NIR order, converted to reflectance x 10000; labels 0/1
    p = PatchName(SCENE_B, 1, 1, 1)
    dn_b, truth_b = train[SCENE_B]
    want = cut_scene(dn_b, SCENE_B)[p]
    np.testing.assert_array_equal(read_chip_dn(r.root / "train_features" / p.name), landsat_dn_to_dn(want))
    np.testing.assert_array_equal(read_label(r.root / "train_labels" / f"{p.name}.tif"),
                                  cut_scene(truth_b, SCENE_B)[p])
    # test: labels cut from the whole-scene truth, the scene truth and the full patch table kept for scoring
    assert resolve_split(r.root, "test").has_labels
    table = read_patch_table(r.root)
    assert len(table) == 4 and table["empty"].sum() == 2 and set(table[["rows", "cols"]].iloc[0]) == {2}
    np.testing.assert_array_equal(read_label(r.root / "test_scene_gts" / f"{SCENE_A}.tif"), test[SCENE_A][1])
    # unchanged source: reused; a changed source is imported again
    assert import_38cloud(root, tmp_path / "imp", progress=False).reused
    (root / "38-Cloud_training" / "train_gt" / PatchName(SCENE_B, 1, 1, 1).file("gt")).unlink()
    with pytest.raises(DataError, match="train_gt: 1 patch file"):
        import_38cloud(root, tmp_path / "imp", progress=False)
    assert (tmp_path / "imp" / "landsat_import.json").is_file()  # the failed import left the old one intact
    assert not list(tmp_path.glob(".imp.tmp-*"))


def test_resolve_split_imports_a_38cloud_root_once(hand_root, monkeypatch, tmp_path):
    root, _, _ = hand_root
    monkeypatch.setenv("CLOUDKD_LANDSAT_CACHE", str(tmp_path / "cache"))
    s = resolve_split(root, "train")
    assert s.root == tmp_path / "cache" / "38cloud.oncloudn" and len(s.chip_ids()) == 6
    stamp = s.root / "landsat_import.json"
    t = stamp.stat().st_mtime_ns
    assert resolve_split(root / "38-Cloud_training", "train").root != s.root  # a sub-folder is its own dataset
    assert resolve_split(root, "test").root == s.root and stamp.stat().st_mtime_ns == t


def test_the_nonempty_list_decides_which_training_patches_are_kept(hand_root, tmp_path):
    root, _, _ = hand_root
    # two patches listed (one of them is in fact empty: it is still left out); the other four are not listed
    pd.DataFrame({"name": [f"patch_1_1_by_1_{SCENE_B}", f"patch_3_2_by_1_{SCENE_A}", f"patch_2_1_by_2_{SCENE_A}"]}) \
        .to_csv(root / "38-Cloud_training" / "training_patches_38-cloud_nonempty.csv", index=False)
    r = import_38cloud(root, tmp_path / "imp", progress=False)
    assert sorted(resolve_split(r.root, "train").chip_ids()) == [f"patch_1_1_by_1_{SCENE_B}",
                                                                 f"patch_3_2_by_1_{SCENE_A}"]
    assert r.n_empty["train"] == 6


def test_bad_patches_are_named(hand_root, tmp_path):
    root, _, _ = hand_root
    f = root / "38-Cloud_test" / "test_nir" / PatchName(SCENE_A, 1, 1, 1).file("nir")
    tifffile.imwrite(f, np.zeros((PATCH, PATCH), np.float32) + 1)
    with pytest.raises(DataError, match=f"{f.name}: wrong dtype float32"):
        import_38cloud(root, tmp_path / "imp", progress=False)
    f.write_bytes(b"not a tiff")
    with pytest.raises(DataError, match=f"{f.name}: unreadable or corrupt TIFF"):
        import_38cloud(root, tmp_path / "imp", progress=False)
    assert not (tmp_path / "imp").exists()


# ----------------------------------------------------------------------------------------------------------------
# scene metrics on hand-made predictions
# ----------------------------------------------------------------------------------------------------------------
def test_scene_metrics_by_hand(tmp_path):
    root = tmp_path / "imp"
    h, w = 400, 700  # a 2x2 grid
    truth_a = np.zeros((h, w), np.uint8)
    truth_a[:200] = 1                      # top half cloud: 140,000 px
    pred_a = np.zeros((h, w), np.uint8)
    pred_a[:, :350] = 1                    # left half predicted: 140,000 px, overlap 70,000
    truth_b = np.zeros((h, w), np.uint8)
    truth_b[50:150, 100:300] = 1
    truth_c = np.zeros((h, w), np.uint8)   # a clear scene predicted clear: Jaccard undefined
    rows = []
    for scene, truth, pred in ((SCENE_A, truth_a, pred_a), (SCENE_B, truth_b, truth_b),
                               ("LC08_L1TP_001001_20150101_20160101_01_T1", truth_c, truth_c)):
        write_mask(root / "test_scene_gts" / f"{scene}.tif", truth)
        for p, arr in cut_scene(pred, scene).items():
            empty = scene == SCENE_B and p.row == 2 and p.col == 2  # no prediction needed: 0 by definition
            if not empty:
                write_mask(tmp_path / "pred" / f"{p.name}.tif", arr)
            rows.append({"chip_id": p.name, "scene": scene, "n": p.n, "row": p.row, "col": p.col, "empty": empty,
                         "rows": 2, "cols": 2})
    pd.DataFrame(rows).to_csv(root / "test_patches.csv", index=False)
    (root / "test_features").mkdir()
    rep = score_scenes(tmp_path / "pred", root)
    assert rep.ok and len(rep.per_scene) == 3
    a = rep.per_scene.set_index("scene").loc[SCENE_A]
    assert (a.tp, a.fp, a.fn, a.tn) == (70000, 70000, 70000, 70000)
    assert a.jaccard == pytest.approx(1 / 3) and a.precision == a.recall == a.specificity == a.accuracy == 0.5
    b = rep.per_scene.set_index("scene").loc[SCENE_B]
    assert b.jaccard == 1.0 and b.n_empty == 1
    m = rep.means
    assert m["jaccard"] == pytest.approx((1 / 3 + 1) / 2)      # the clear scene has no Jaccard index
    assert m["accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["specificity"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert rep.summary()["pooled"]["jaccard"] == pytest.approx((70000 + 20000) / (210000 + 20000))
    # a missing prediction of a non-empty patch refuses the scene
    (tmp_path / "pred" / f"patch_1_1_by_1_{SCENE_A}.tif").unlink()
    rep = score_scenes(tmp_path / "pred", root)
    assert not rep.ok and rep.missing == [f"patch_1_1_by_1_{SCENE_A}"] and len(rep.per_scene) == 2


# ----------------------------------------------------------------------------------------------------------------
# the generator and every command on generated Landsat patches
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def landsat(tmp_path_factory):
    root = tmp_path_factory.mktemp("landsat") / "l8"
    cfg = Landsat38Config(n_train_scenes=4, n_test_scenes=2, min_grid=1, max_grid=2, oversample=1, seed=3)
    synthesize_38cloud(root, cfg, progress=False)
    return root


def test_generator_writes_the_38cloud_layout(landsat):
    tr, te = landsat / "38-Cloud_training", landsat / "38-Cloud_test"
    reds = sorted((tr / "train_red").iterdir())
    assert reds and all(f.name.startswith("red_patch_") and f.suffix == ".TIF" for f in reds)
    pooled = []
    for f in reds:
        p = parse_patch_name(f.name)
        arr = tifffile.imread(f)
        assert arr.shape == (PATCH, PATCH) and arr.dtype == np.uint16
        valid = arr[arr > 0]
        if valid.size:  # Landsat-8 L1 DN = (reflectance + 0.1) / 2e-5: reflectance > 0 -> DN > 5000
            assert valid.min() >= 5005
            pooled.append(valid)
        assert set(np.unique(tifffile.imread(tr / "train_gt" / p.file("gt"))).tolist()) <= {0, 255}
    # reflectance of ground and cloud together: a median between 0.01 and 0.9 (these scenes are cloudy)
    assert 5500 < np.median(np.concatenate(pooled)) < 50000
    listed = set(pd.read_csv(tr / "training_patches_38-cloud_nonempty.csv")["name"])
    nonempty = {parse_patch_name(f.name).name for f in reds if tifffile.imread(f).any()}
    assert listed == nonempty
    gts = sorted((te / "Entire_scene_gts").iterdir())
    assert len(gts) == 2 and all(g.name.startswith("edited_corrected_gts_LC08_") for g in gts)
    assert not (te / "test_gt").exists()  # like 38-Cloud: the test split has whole-scene truth only
    info = json.loads((landsat / "synth38.json").read_text())
    assert not set(info["scenes"]["train"]) & set(info["scenes"]["test"])
    again = synthesize_38cloud(landsat, Landsat38Config(**info["config"]), progress=False)
    assert again.reused


def test_every_command_runs_on_a_38cloud_root(landsat, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDKD_LANDSAT_CACHE", str(tmp_path / "cache"))
    r = invoke("landsat", "import", landsat)
    assert r.exit_code == 0, r.output
    assert "test:" in r.output and "train:" in r.output
    r = invoke("folds", landsat, "--k", 2, "--out", tmp_path / "folds.csv")
    assert r.exit_code == 0, r.output
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert folds.groupby("location")["fold"].nunique().max() == 1  # a scene never spans two folds

    # thresholding baseline
    r = invoke("baseline", "threshold", "fit", landsat, "--out", tmp_path / "thr.json")
    assert r.exit_code == 0, r.output
    r = invoke("baseline", "threshold", "predict", "--model", tmp_path / "thr.json", "--features", landsat,
               "--split", "test", "--out", tmp_path / "pred_thr")
    assert r.exit_code == 0, r.output
    r = invoke("landsat", "score", "--pred", tmp_path / "pred_thr", "--data", landsat, "--json", tmp_path / "t.json",
               "--masks", tmp_path / "scenes_thr")
    assert r.exit_code == 0, r.output
    assert "mean over 2 scenes" in r.output
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["ok"] and summary["n_scenes"] == 2
    assert 0 < summary["mean_over_scenes"]["accuracy"] <= 1
    # the stitched scene masks are the predicted patches put back: cut them again and compare
    table = read_patch_table(resolve_split(landsat, "test").root)
    for scene, g in table.groupby("scene"):
        gt = read_label(resolve_split(landsat, "test").root / "test_scene_gts" / f"{scene}.tif")
        stitched = read_label(tmp_path / "scenes_thr" / f"{scene}.tif", gt.shape)
        cut = cut_scene(stitched, scene, grid=(int(g.rows.iloc[0]), int(g.cols.iloc[0])))
        for p, arr in cut.items():
            row = g[g.chip_id == p.name].iloc[0]
            if row["empty"]:
                assert not arr.any()
            else:
                pred = read_label(tmp_path / "pred_thr" / f"{p.name}.tif")
                top, left = padding(gt.shape, (int(g.rows.iloc[0]), int(g.cols.iloc[0])))
                inside = np.zeros_like(pred, bool)  # compare inside the scene (the padding is cropped away)
                rr = np.arange(PATCH) + (p.row - 1) * PATCH - top
                cc = np.arange(PATCH) + (p.col - 1) * PATCH - left
                inside[np.ix_((rr >= 0) & (rr < gt.shape[0]), (cc >= 0) & (cc < gt.shape[1]))] = True
                np.testing.assert_array_equal(arr[inside], pred[inside])

    # student: train, predict, score
    r = invoke("train", landsat, "--out", tmp_path / "student", "--folds", tmp_path / "folds.csv", "--epochs", 1,
               "--steps", 2, "--batch", 2, "--crop", 128, "--model", "unet-xs")
    assert r.exit_code == 0, r.output
    r = invoke("predict", "--model", tmp_path / "student", "--features", landsat, "--split", "test",
               "--out", tmp_path / "pred_student")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "pred_student").glob("*.tif"))) == (~table["empty"]).sum()
    r = invoke("landsat", "score", "--pred", tmp_path / "pred_student", "--data", landsat)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred_student_scenes" / "per_scene.csv").is_file()
    # the label audit of the training patches
    r = invoke("audit", landsat, "--model", tmp_path / "student", "--out", tmp_path / "audit", "--top", 2)
    assert r.exit_code == 0, r.output
    audited = pd.read_csv(tmp_path / "audit" / "audit.csv")
    assert sorted(audited["chip_id"]) == resolve_split(landsat, "train").chip_ids()

    # teacher: prepare (scenes as locations), train a tiny budget, predict the test patches, score
    w = tmp_path / "nnunet"
    r = invoke("teacher", "prepare", landsat, "--workdir", w, "--folds", tmp_path / "folds.csv")
    assert r.exit_code == 0, r.output
    assert "384x384" in r.output
    r = invoke("teacher", "train", "--workdir", w, "--device", "cpu", "--epochs", 1, "--iters", 2, "--val-iters", 1,
               "--patch", 128, "--batch", 2, "--base-features", 4, "--max-features", 16)
    assert r.exit_code == 0, r.output
    r = invoke("teacher", "predict", "--workdir", w, "--features", landsat, "--split", "test", "--device", "cpu",
               "--masks-out", tmp_path / "pred_teacher")
    assert r.exit_code == 0, r.output
    r = invoke("landsat", "score", "--pred", tmp_path / "pred_teacher", "--data", landsat)
    assert r.exit_code == 0, r.output


def test_landsat_score_refuses_missing_patches(landsat, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDKD_LANDSAT_CACHE", str(tmp_path / "cache"))
    test = resolve_split(landsat, "test")
    r = invoke("landsat", "score", "--pred", test.labels_dir, "--data", landsat)
    assert isinstance(r.exception, DataError) and "lies inside the input" in str(r.exception)  # the default
    # report folder would be in the import, which a new import replaces
    r = invoke("landsat", "score", "--pred", test.labels_dir, "--data", landsat, "--report-dir", tmp_path / "truth")
    assert r.exit_code == 0 and "accuracy 100.00" in r.output, r.output  # the truth scores 100 %
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in list(test.labels_dir.glob("*.tif"))[1:]:
        (pred / f.name).write_bytes(f.read_bytes())
    r = invoke("landsat", "score", "--pred", pred, "--data", landsat)
    assert r.exit_code == 1 and "refused: 1 non-empty patch" in r.output
