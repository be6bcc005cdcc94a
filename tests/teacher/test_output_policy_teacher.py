"""The output policy (issue 29, phase 2) for the teacher's commands without a trained teacher: teacher predict's
outputs apart from each other and from its inputs, a dataset name nnU-Net can use, the memory check of --batch.
Each test failed on the code before its fix (the tests that need a trained teacher are in test_teacher.py)."""

import shutil

from conftest import invoke, one_line_refusal, snapshot, user_folder


_one_line_refusal = one_line_refusal


def test_teacher_predict_outputs_are_two_folders_apart_from_its_inputs(small_data, tmp_path, capsys):
    feats = tmp_path / "test_features"  # without a metadata CSV beside it
    shutil.copytree(small_data / "test_features", feats)
    ws = tmp_path / "nn"
    d = tmp_path / "d"
    before = snapshot(tmp_path)
    for args in (["--masks-out", d, "--soft-out", d], ["--masks-out", d, "--soft-out", d / "soft"],
                 ["--masks-out", feats / "m"], ["--soft-out", feats], ["--masks-out", ws],
                 ["--soft-out", ws / "soft"]):
        code, text = invoke(["teacher", "predict", "--features", feats, "--workdir", ws, *args, "--force"], capsys)
        _one_line_refusal(code, text)
        assert "no trained teacher" not in text and ("the input" in text or "--soft-out" in text), text
        assert snapshot(tmp_path) == before, args


def test_teacher_prepare_refuses_a_name_nnunet_cannot_use(small_data, tmp_path, capsys):
    for name in ("a/b c", "a b", "", "../x"):
        code, text = invoke(["teacher", "prepare", small_data, "--workdir", tmp_path / "nn", "--name", name], capsys)
        _one_line_refusal(code, text, "--name")
        assert not (tmp_path / "nn").exists()


def test_teacher_batch_gets_a_memory_check(tmp_path, capsys):
    code, text = invoke(["teacher", "train", "--workdir", tmp_path / "nn", "--device", "cpu", "--batch", 100000],
                        capsys)
    _one_line_refusal(code, text, "memory")
    assert not (tmp_path / "nn").exists()


def test_a_failed_teacher_prediction_leaves_no_masks_or_soft_labels(small_data, tmp_path, monkeypatch, capsys):
    """A chip that fails to read stopped teacher predict half-way: both folders were left with their record and
    the files written so far. A stand-in teacher (no nnU-Net training) predicts every chip clear."""
    import numpy as np

    from cloudkd.teacher import model as teacher_model

    class Teacher:
        folds = (0,)
        model_folder = tmp_path / "nn_model"
        threshold = 0.5

        def predict_chip(self, refl, threshold):
            prob = np.zeros(refl.shape[1:], np.float32)
            return prob, prob > threshold

    (tmp_path / "nn_model" / "fold_0").mkdir(parents=True)
    (tmp_path / "nn_model" / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    monkeypatch.setattr(teacher_model.NnUNetTeacher, "from_workspace", classmethod(lambda cls, *a, **k: Teacher()))
    feats = tmp_path / "data" / "test_features"
    shutil.copytree(small_data / "test_features", feats)
    (sorted(feats.iterdir())[-1] / "B03.tif").write_bytes(b"not a TIFF")
    args = ["teacher", "predict", "--workdir", tmp_path / "nn", "--device", "cpu", "--masks-out", tmp_path / "m",
            "--soft-out", tmp_path / "s"]
    before = snapshot(tmp_path)
    code, text = invoke(args + ["--features", feats], capsys)
    last = [line for line in text.splitlines() if line.strip()][-1]  # after the progress bar
    assert code == 2 and "Traceback" not in text and last.startswith("error: ") and "B03.tif" in last, text
    assert snapshot(tmp_path) == before
    code, text = invoke(args + ["--features", small_data / "test_features"], capsys)
    assert code == 0, text
    assert len(list((tmp_path / "m").glob("*.tif"))) == len(list((tmp_path / "s").glob("*.tif"))) > 0
