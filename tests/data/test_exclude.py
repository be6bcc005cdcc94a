"""``--exclude FILE`` (chip ids from a label audit) on every command that reads a training set: the file format, the
chips really left out of what each command uses, fold -1 in a folds file, and an unknown id refused up front."""

import json

import numpy as np
import pandas as pd
import pytest

from cloudkd.baselines.threshold import ThresholdModel, fit_threshold
from cloudkd.data import DataError, apply_exclude, load_index, read_exclude, read_label, resolve_split
from cloudkd.data.datamodule import CloudDataModule
from cloudkd.data.folds import EXCLUDED, make_folds, read_folds, split_by_fold, training_split, write_folds
from cloudkd.data.soft import write_soft

from conftest import invoke, one_line_refusal, snapshot

#: tiny trainings: one step of the smallest student on small crops
TINY = ["--model", "unet-xs", "--epochs", "1", "--steps", "1", "--batch", "2", "--crop", "32", "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def chosen(small_data, tmp_path_factory):
    """Four chips of four different locations, listed (with a comment, blanks, padding and a duplicate) in a file."""
    index = load_index(resolve_split(small_data, "train"))
    picks = index.drop_duplicates("location")["chip_id"].tolist()[:4]
    assert len(picks) == 4
    f = tmp_path_factory.mktemp("exclude") / "exclude.txt"
    f.write_text("# suspicious labels (cloudkd evaluate audit)\n\n" + "\n".join(f"  {c}\t" for c in picks)
                 + f"\n{picks[0]}\n")
    return {"ids": sorted(picks), "file": f, "index": index, "kept": index[~index.chip_id.isin(picks)]}


# ---------------------------------------------------------------------------------------------------- the file
def test_read_exclude_format(tmp_path):
    f = tmp_path / "ex.txt"
    f.write_text("# a comment\n\n  chip_b  \nchip_a\n   \n#chip_c\n\tchip_b\n")
    assert read_exclude(f) == ["chip_b", "chip_a"]  # comments, blanks, whitespace, duplicates: file order, once
    (tmp_path / "empty.txt").write_text("# nothing listed\n\n")
    assert read_exclude(tmp_path / "empty.txt") == []
    (tmp_path / "audit.csv").write_text("chip_id,iou,suspicious\nabcd,0.1,True\n efgh ,0.2,True\n")
    assert read_exclude(tmp_path / "audit.csv") == ["abcd", "efgh"]  # an audit CSV: its chip_id column
    with pytest.raises(DataError, match=f"{tmp_path / 'nope.txt'}: exclude file does not exist"):
        read_exclude(tmp_path / "nope.txt")


def test_an_exclude_folder_is_called_a_folder_not_a_missing_file(small_data, tmp_path, capsys):
    ids = tmp_path / "ids"
    ids.mkdir()
    with pytest.raises(DataError, match=f"{ids}: is a folder, not a file of chip ids"):
        read_exclude(ids)
    code, text = invoke(["data", "folds", small_data, "--out", tmp_path / "f.csv", "--exclude", ids], capsys)
    one_line_refusal(code, text, f"{ids}: is a folder, not a file of chip ids")
    assert "does not exist" not in text and not (tmp_path / "f.csv").exists()


def test_apply_exclude_counts_unique_ids_and_refuses_unknown_ones(small_data, chosen):
    split = resolve_split(small_data, "train")
    kept, n = apply_exclude(chosen["index"], chosen["file"], split.features_dir)
    assert n == 4 and len(kept) == len(chosen["index"]) - 4
    assert not set(kept.chip_id) & set(chosen["ids"])
    with pytest.raises(DataError, match=f"{chosen['file']}: 1 listed chip id.* not in {split.features_dir}: nosuch"):
        apply_exclude(chosen["index"], chosen["file"], split.features_dir, ids=chosen["ids"] + ["nosuch"])


# ---------------------------------------------------------------------------------------------------- folds
def test_split_by_fold_leaves_fold_minus_one_out_of_both_parts(tmp_path):
    index = pd.DataFrame({"chip_id": list("abcdefg"), "location": ["x", "x", "y", "y", "z", "z", "x"]})
    folds = index.assign(fold=[0, 0, 1, 1, 2, EXCLUDED, EXCLUDED])  # g and f share locations with folds 0 and 2
    write_folds(folds, tmp_path / "folds.csv")  # a left-out chip at a fold's location is not a leak
    back = read_folds(tmp_path / "folds.csv")
    assert back.fold.tolist() == [0, 0, 1, 1, 2, -1, -1]
    for k in (0, 1, 2):
        train, val = split_by_fold(index, back, k)
        assert not {"f", "g"} & (set(train.chip_id) | set(val.chip_id))
        assert len(train) + len(val) == 5 and set(val.chip_id) == set(folds.chip_id[folds.fold == k])
    with pytest.raises(DataError, match="fold -1 marks the chips left out of every fold.*folds: \\[0, 1, 2\\]"):
        split_by_fold(index, back, EXCLUDED)
    pd.DataFrame({"chip_id": ["a"], "location": ["x"], "fold": [-2]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="bad.csv: fold must be a whole number >= 0"):
        read_folds(tmp_path / "bad.csv")


def test_training_split_excluding_chips_moves_no_other_chip():
    """62 chips at 12 locations: folds are made on the full table, then the 4 excluded chips get fold -1 (folds
    made after the exclusion moved 29 of the other 58 chips to another fold)."""
    counts = [9, 8, 7, 7, 6, 5, 5, 4, 4, 3, 2, 2]
    index = pd.DataFrame([(f"c{i:02d}{j:02d}", f"loc{i:02d}") for i, n in enumerate(counts) for j in range(n)],
                         columns=["chip_id", "location"])
    assert len(index) == 62
    full = make_folds(index, k=5, seed=0).set_index("chip_id")["fold"]
    out = [index.chip_id[index.location == loc].iloc[0] for loc in ("loc00", "loc03", "loc06", "loc09")]
    for given in (None, make_folds(index, k=5, seed=0)):  # folds made here, or a folds file's
        split = training_split(index, given, out, k=5, seed=0).set_index("chip_id")["fold"]
        assert sorted(split.index) == sorted(index.chip_id)  # every chip still listed
        assert sorted(split.index[split == EXCLUDED]) == sorted(out)
        rest = split[split != EXCLUDED]
        pd.testing.assert_series_equal(rest, full[rest.index], check_dtype=False)
    with pytest.raises(DataError, match="f.csv: 1 chip.* have no fold assigned: \\['c0000'\\]"):
        training_split(index, make_folds(index, k=5).iloc[1:], source="f.csv")


def test_folds_exclude_marks_minus_one_and_moves_no_other_chip(small_data, chosen, tmp_path, capsys):
    code, out = invoke(["data", "folds", small_data, "--out", tmp_path / "folds.csv", "--k", 3, "--exclude",
                        chosen["file"]], capsys)
    assert code == 0, out
    assert f"excluding 4 of 30 chips listed in {chosen['file']}" in out
    folds = read_folds(tmp_path / "folds.csv")
    assert sorted(folds.chip_id) == sorted(chosen["index"].chip_id)  # every chip still listed
    assert sorted(folds.chip_id[folds.fold == EXCLUDED]) == chosen["ids"]
    # the other chips: exactly their folds without --exclude (folds are made on all chips; made after the
    # exclusion, 20 of these 26 chips moved)
    code, out = invoke(["data", "folds", small_data, "--out", tmp_path / "all.csv", "--k", 3], capsys)
    assert code == 0, out
    everyone = read_folds(tmp_path / "all.csv").set_index("chip_id")["fold"]
    rest = folds[folds.fold != EXCLUDED].set_index("chip_id")["fold"]
    pd.testing.assert_series_equal(rest, everyone[rest.index], check_dtype=False)

    # the readers of this folds file: the left-out chips in neither part, and counted
    train, val = split_by_fold(chosen["index"], folds, 0)
    assert not set(chosen["ids"]) & (set(train.chip_id) | set(val.chip_id)) and len(train) + len(val) == 26
    dm = CloudDataModule(small_data, folds=tmp_path / "folds.csv", val_fold=1)
    dm.setup_index()
    assert dm.excluded == chosen["ids"] and len(dm.train_index) + len(dm.val_index) == 26
    assert not set(chosen["ids"]) & (set(dm.train_index.chip_id) | set(dm.val_index.chip_id))
    code, out = invoke(["baseline", "threshold", "fit", small_data, "--out", tmp_path / "t.json", "--folds",
                        tmp_path / "folds.csv", "--val-fold", 0], capsys)
    assert code == 0, out
    assert f"excluding 4 of 30 chips left out of every fold (fold -1) in {tmp_path / 'folds.csv'}" in out
    assert ThresholdModel.load(tmp_path / "t.json").n_train_chips == len(train)
    # fold -1 is never a validation fold
    for cmd in (["baseline", "threshold", "fit", small_data, "--out", tmp_path / "t2.json"],
                ["student", "train", small_data, "--out", tmp_path / "run"]):
        code, out = invoke([*cmd, "--folds", tmp_path / "folds.csv", "--val-fold", -1], capsys)
        assert code == 2 and "--val-fold" in out and "Traceback" not in out, out
    assert not (tmp_path / "t2.json").exists() and not (tmp_path / "run").exists()


def test_datamodule_exclude_moves_no_other_chip(small_data, chosen):
    """A student's folds made from the data (no folds file): the excluded chips are in no part, and every other
    chip is in the part its fold gives it without --exclude."""
    full = make_folds(chosen["index"], k=3, seed=0).set_index("chip_id")["fold"]
    for val_fold in range(3):
        dm = CloudDataModule(small_data, val_fold=val_fold, k=3, exclude=chosen["file"])
        dm.setup_index()
        assert dm.excluded == chosen["ids"]
        want_val = set(full.index[full == val_fold]) - set(chosen["ids"])
        want_train = set(full.index[full != val_fold]) - set(chosen["ids"])
        assert set(dm.val_index.chip_id) == want_val and set(dm.train_index.chip_id) == want_train


# ---------------------------------------------------------------------------------------------------- each command
def test_threshold_fit_equals_a_fit_without_the_excluded_chips(small_data, chosen, tmp_path, capsys):
    code, out = invoke(["baseline", "threshold", "fit", small_data, "--out", tmp_path / "t.json", "--exclude",
                        chosen["file"]], capsys)
    assert code == 0, out
    assert f"excluding 4 of 30 chips listed in {chosen['file']}" in out
    got = ThresholdModel.load(tmp_path / "t.json")
    want = fit_threshold(chosen["kept"]["features"], chosen["kept"]["label"], stride=4)
    assert got.n_train_chips == 26
    assert (got.brightness_min, got.whiteness_max, got.fit_jaccard) == pytest.approx(
        (want.brightness_min, want.whiteness_max, want.fit_jaccard))


class _Recording(CloudDataModule):
    """The data module a training run really uses, kept for the test to look at."""
    made = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        _Recording.made.append(self)


@pytest.mark.parametrize("command", ["train", "distill"])
def test_student_training_never_sees_the_excluded_chips(small_data, chosen, tmp_path, capsys, monkeypatch, command):
    extra = []
    if command == "distill":  # offline soft labels for the kept chips only: the excluded ones need none
        soft = tmp_path / "soft"
        for r in chosen["kept"].itertuples():
            write_soft(soft / f"{r.chip_id}.tif", read_label(r.label).astype(np.float32) * 0.8 + 0.1)
        extra = ["--soft", soft]
    monkeypatch.setattr("cloudkd.student.train.CloudDataModule", _Recording)
    _Recording.made.clear()
    run = tmp_path / "run"
    code, out = invoke(["student", command, small_data, "--out", run, "--exclude", chosen["file"], *TINY, *extra],
                       capsys)
    assert code == 0, out
    assert f"excluding 4 of 30 chips listed in {chosen['file']}" in out
    (dm,) = _Recording.made
    used = set(dm.train_index.chip_id) | set(dm.val_index.chip_id)
    assert not used & set(chosen["ids"]) and len(used) == 26
    assert not {dm.train_set[i]["chip_id"] for i in range(len(dm.train_set))} & set(chosen["ids"])
    info = json.loads((run / "student.json").read_text())
    assert info["config"]["exclude"] == str(chosen["file"])
    assert info["excluded"] == {"n_chips": 4, "chip_ids": chosen["ids"]}
    assert info["teacher_mode"] == ("offline" if command == "distill" else "none")


def test_teacher_prepare_converts_no_excluded_chip(small_data, chosen, tmp_path, capsys):
    ws = tmp_path / "ws"
    code, out = invoke(["teacher", "prepare", small_data, "--workdir", ws, "--k", 3, "--exclude", chosen["file"]],
                       capsys)
    assert code == 0, out
    assert f"excluding 4 of 30 chips listed in {chosen['file']}" in out and "26 chips of 96x96 prepared" in out
    (raw,) = (ws / "nnUNet_raw").iterdir()
    cases = {p.name[: -len(".tif")] for p in (raw / "labelsTr").iterdir()}
    assert cases == set(chosen["kept"].chip_id)
    assert not [p for p in (raw / "imagesTr").iterdir() if p.name.rsplit("_", 1)[0] in chosen["ids"]]
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["numTraining"] == 26 and meta["cloudkd_excluded"]["chip_ids"] == chosen["ids"]
    splits = json.loads(next((ws / "nnUNet_preprocessed").rglob("splits_final.json")).read_text())
    assert len(splits) == 3 and not {c for s in splits for c in s["train"] + s["val"]} & set(chosen["ids"])
    full = make_folds(chosen["index"], k=3, seed=0)  # the folds without --exclude: no other chip moved
    for f, s in enumerate(splits):
        assert sorted(s["val"]) == sorted(set(full.chip_id[full.fold == f]) - set(chosen["ids"]))

    # a folds file's fold -1 leaves the same chips out (no --exclude needed)
    folds = training_split(chosen["index"], exclude=chosen["ids"], k=3, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    code, out = invoke(["teacher", "prepare", small_data, "--workdir", tmp_path / "ws2", "--folds",
                        tmp_path / "folds.csv"], capsys)
    assert code == 0, out
    assert "excluding 4 of 30 chips left out of every fold (fold -1)" in out
    (raw2,) = (tmp_path / "ws2" / "nnUNet_raw").iterdir()
    assert {p.name[: -len(".tif")] for p in (raw2 / "labelsTr").iterdir()} == cases
    splits2 = json.loads(next((tmp_path / "ws2" / "nnUNet_preprocessed").rglob("splits_final.json")).read_text())
    assert splits2 == splits  # fold -1 is no nnU-Net fold


# ---------------------------------------------------------------------------------------------------- refusals
COMMANDS = {
    "folds": ["data", "folds", "{data}", "--out", "{w}/folds.csv"],
    "train": ["student", "train", "{data}", "--out", "{w}/run", *TINY],
    "distill": ["student", "distill", "{data}", "--out", "{w}/run", "--soft", "{w}/soft", *TINY],
    "teacher-prepare": ["teacher", "prepare", "{data}", "--workdir", "{w}/nnunet"],
    "threshold-fit": ["baseline", "threshold", "fit", "{data}", "--out", "{w}/t.json"],
}


@pytest.mark.parametrize("problem", ["unknown-id", "missing-file", "folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_exclude_file_is_refused_up_front_and_nothing_is_written(small_data, chosen, tmp_path, capsys,
                                                                        command, problem):
    w = tmp_path / "w"
    (w / "soft").mkdir(parents=True)
    bad = tmp_path / "exclude.txt"
    if problem == "unknown-id":
        bad.write_text(f"{chosen['ids'][0]}\n# a comment\nnot_a_chip\n")
    elif problem == "folder":
        bad = tmp_path / "exclude"
        bad.mkdir()
    args = [str(a).format(data=small_data, w=w) for a in COMMANDS[command]]
    before = snapshot(w, small_data)
    code, out = invoke([*args, "--exclude", bad], capsys)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and "Traceback" not in out, out
    if problem == "unknown-id":
        assert f"not in {small_data / 'train_features'}: not_a_chip" in lines[0]
    elif problem == "folder":
        assert "is a folder, not a file of chip ids" in lines[0]
    else:
        assert "exclude file does not exist" in lines[0]
    assert snapshot(w, small_data) == before, f"{command} wrote something"
