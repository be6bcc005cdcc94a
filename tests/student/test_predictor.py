"""The one model loader (:mod:`cloudkd.student.predictor`): every kind of path gives the logits of the model loaded
directly, with its params, bytes, MACs and recorded threshold; a path that is no model is one line naming it."""

import shutil

import numpy as np
import pytest
import torch

from cloudkd.common.errors import DataError
from cloudkd.common.infer import DEFAULT_THRESHOLD
from cloudkd.common.onnx import ort_logits, ort_session, stamp_rule
from cloudkd.common.sizes import count_macs, count_params
from cloudkd.student.predictor import load_predictor, model_kind
from cloudkd.student.runs import load_student, recorded_threshold


def _batch(n=2, size=64):
    return torch.from_numpy(np.random.default_rng(0).normal(size=(n, 4, size, size)).astype(np.float32))


def test_student_paths_give_the_runs_logits(student, tmp_path):
    net = load_student(student)
    x = _batch()
    with torch.no_grad():
        want = net(x).numpy()
    ckpts = sorted((student / "checkpoints").glob("*.ckpt"))
    for path in [student, student / "student.pt", student / "student.json"]:
        p = load_predictor(path)
        assert p.kind == "student" and model_kind(path) == "student"
        assert p.name == f"student unet-s ({student.name})"
        np.testing.assert_allclose(p.logits(x).numpy(), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p.numpy_logits(x.numpy()), want, rtol=1e-5, atol=1e-5)
        assert p.params == count_params(net)
        assert p.bytes == (student / "student.pt").stat().st_size
        assert p.threshold == recorded_threshold(student)
        assert p.macs == count_macs(net, 512) > 0
    if ckpts:  # a checkpoint of the run: its own weights, the run's record
        p = load_predictor(ckpts[-1])
        assert p.kind == "student" and p.threshold == recorded_threshold(student)
        assert p.logits(x).shape == (2, 1, 64, 64)


def test_onnx_file_gives_the_sessions_logits(student, tmp_path):
    from cloudkd.onboard.export import export_onnx

    path = export_onnx(load_student(student), tmp_path / "model.onnx")
    stamp_rule(path, 0.35)
    x = _batch()
    want = ort_logits(ort_session(path), x.numpy())
    p = load_predictor(path)
    assert p.kind == "onnx" and p.name == "ONNX model.onnx" and model_kind(path) == "onnx"
    np.testing.assert_allclose(p.logits(x).numpy(), want, rtol=1e-6, atol=1e-6)
    assert p.params is None and p.macs is None
    assert p.bytes == path.stat().st_size
    assert p.threshold == pytest.approx(0.35) == recorded_threshold(path)
    with torch.no_grad():  # and the same model as the run's
        np.testing.assert_allclose(want, load_student(student)(x).numpy(), rtol=1e-3, atol=1e-3)


def test_nnunet_workdir_is_the_teacher(tmp_path, monkeypatch):
    from cloudkd.teacher import model as teacher_model

    work = tmp_path / "nnunet"
    work.mkdir()
    (work / "teacher.json").write_text("{}")
    net = torch.nn.Conv2d(4, 1, 3, padding=1)

    class FakeTeacher:
        network, patch_size, n_params = net, (512, 512), count_params(net)
        threshold = 0.35  # as fitted by teacher fit-threshold: the predictor's rule takes the teacher's own

        def logits(self, x):
            return net(x)

    seen = {}

    def from_workspace(ws, folds=None, **kw):
        seen.update(root=ws.root, folds=folds, **kw)
        return FakeTeacher()

    monkeypatch.setattr(teacher_model.NnUNetTeacher, "from_workspace", staticmethod(from_workspace))
    p = load_predictor(work, folds=[1])
    assert p.kind == "nnunet" and model_kind(work) == "nnunet" and p.name == f"nnU-Net teacher ({work})"
    assert seen == {"root": work.resolve(), "folds": [1], "device": "cpu"}
    x = _batch()
    with torch.no_grad():
        np.testing.assert_array_equal(p.logits(x).detach().numpy(), net(x).numpy())
    assert p.params == count_params(net) and p.bytes > 0 and p.threshold == 0.35 != DEFAULT_THRESHOLD
    assert p.macs == count_macs(net, 512)


def test_a_path_that_is_no_model_is_one_line_naming_it(student, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, says in [(notes, "unknown model kind"), (empty, "unknown model kind"),
                       (tmp_path / "none", "model not found")]:
        with pytest.raises(DataError) as e:
            load_predictor(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and says in msg
    # a run folder whose weights are damaged: the run loader's one line
    broken = tmp_path / "run"
    shutil.copytree(student, broken)
    (broken / "student.pt").write_bytes(b"")
    with pytest.raises(DataError, match="not readable weights"):
        load_predictor(broken)
