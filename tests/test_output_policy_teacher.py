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
