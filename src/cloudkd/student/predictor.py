"""The one answer to "what model is this path": :func:`load_predictor` turns a student run (its folder,
``student.pt`` / ``student.json`` or a ``.ckpt`` in it), an ``.onnx`` file or an nnU-Net teacher work folder into a
:class:`Predictor` with the same face whatever it is: ``logits(x)`` (a normalised float32 torch batch
(N, 4, H, W) -> cloud logits (N, 1, H, W), a torch tensor: on the CPU, or the nnU-Net teacher's ``device``), ``params``, ``bytes`` (the weights on disk),
``macs`` (per 512x512 chip where they can be counted), the recorded prediction rule ``threshold`` and ``dilate``
(:func:`cloudkd.student.runs.recorded_rule`), ``kind`` and ``name``.

Predict, the audit, the benchmark, whole scenes, the real-chip benchmark and KD's online teacher all load models
here; ONNX sessions are built only by :mod:`cloudkd.common.onnx`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..common.errors import DataError

KINDS = ("student", "onnx", "nnunet")
#: the chip side MACs are counted for
MAC_SIZE = 512


class Predictor:
    """A loaded model (see the module). ``model``: what was loaded (the student's network, an
    :class:`cloudkd.common.onnx.OnnxModel`, the :class:`cloudkd.teacher.model.NnUNetTeacher`), for callers that
    need it whole; ``run`` / ``info``: a student's run folder and ``student.json``."""

    def __init__(self, kind: str, name: str, path: Path, model, logits: Callable, params, nbytes, threshold: float,
                 macs=None, run: Optional[Path] = None, info: Optional[dict] = None, dilate: int = 0):
        self.kind, self.name, self.path, self.model = kind, name, path, model
        self._logits, self.threshold, self.dilate, self.run, self.info = logits, threshold, dilate, run, info
        # params, bytes, macs: a value, or a function that gives it, called once on first use
        self._lazy = {"params": params, "bytes": nbytes, "macs": macs}

    def _value(self, key: str):
        v = self._lazy[key]
        if callable(v):
            v = self._lazy[key] = v()
        return v

    @property
    def params(self) -> Optional[int]:
        """Number of parameters (None where unknown, e.g. an ONNX file)."""
        return self._value("params")

    @property
    def bytes(self) -> Optional[int]:
        """Bytes of the weights on disk (a student's student.pt, the .onnx file, the teacher's state dict)."""
        return self._value("bytes")

    @property
    def macs(self) -> Optional[int]:
        """Multiply-accumulates per 512x512 chip, or None where they cannot be counted."""
        return self._value("macs")

    def logits(self, x):
        """Cloud logits (N, 1, H, W) (torch) of a normalised float32 batch (N, 4, H, W) (torch or numpy)."""
        import torch

        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(x)
        return self._logits(x)

    def numpy_logits(self, x):
        """:meth:`logits` as a float32 numpy array."""
        return self.logits(x).float().cpu().numpy()

    def __repr__(self) -> str:
        return f"Predictor({self.kind}, {self.name!r})"


def is_student_path(p: Path) -> bool:
    from .runs import interrupted

    if p.is_dir():
        return (p / "student.json").is_file() or interrupted(p)
    return p.suffix in (".pt", ".ckpt") or p.name == "student.json"


def is_nnunet_workdir(p: Path) -> bool:
    return p.is_dir() and ((p / "teacher.json").is_file() or (p / "nnUNet_results").is_dir())


def model_kind(path: os.PathLike | str) -> str:
    """``student``, ``onnx`` or ``nnunet`` for an existing ``path``; a one-line DataError naming it otherwise."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: model not found")
    if p.is_file() and p.suffix == ".onnx":
        return "onnx"
    if is_student_path(p):
        return "student"
    if is_nnunet_workdir(p):
        return "nnunet"
    raise DataError(f"{p}: unknown model kind: expected a student run folder (with student.json), its student.pt "
                    f"or a .ckpt, an .onnx file, or an nnU-Net work folder (with teacher.json)")


def load_predictor(path: os.PathLike | str, threads: Optional[int] = None, kind: Optional[str] = None,
                   device: str = "cpu", folds: Optional[Sequence[int]] = None) -> Predictor:
    """The :class:`Predictor` of ``path`` (``kind`` None: told by :func:`model_kind`). ``threads``: ONNX Runtime's
    intra-op threads, or torch's for the others; ``device`` / ``folds``: the nnU-Net teacher's (None: every
    trained fold)."""
    p = Path(path)
    kind = kind or model_kind(p)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "onnx":
        return _onnx(p, threads)
    import torch

    if threads:
        torch.set_num_threads(threads)
    return _student(p) if kind == "student" else _nnunet(p, device, folds)


def _student(p: Path) -> Predictor:
    from ..common.infer import predict_logits
    from ..common.sizes import count_macs, count_params
    from .runs import load_student, resolve_run, run_rule

    run, info, _ = resolve_run(p)
    net = load_student(p)
    pt = run / "student.pt"
    threshold, dilate = run_rule(info, str(run / "student.json"))
    return Predictor("student", f"student {info['model']} ({run.name})", p, net,
                     lambda x: predict_logits(net, x), count_params(net), pt.stat().st_size if pt.is_file() else None,
                     threshold, lambda: count_macs(net, MAC_SIZE), run=run, info=info, dilate=dilate)


def _onnx(p: Path, threads: Optional[int]) -> Predictor:
    from ..common.onnx import OnnxModel
    from .runs import recorded_rule

    if not p.is_file():
        raise DataError(f"{p}: ONNX model not found")
    m = OnnxModel(p, threads)
    threshold, dilate = recorded_rule(p)
    return Predictor("onnx", f"ONNX {p.name}", p, m, m, None, p.stat().st_size, threshold, dilate=dilate)


def _nnunet(p: Path, device: str, folds: Optional[Sequence[int]]) -> Predictor:
    from ..common.sizes import count_macs, state_dict_bytes
    from ..teacher.model import NnUNetTeacher
    from ..teacher.workspace import Workspace

    t = NnUNetTeacher.from_workspace(Workspace(p), folds=folds, device=device)

    def macs() -> Optional[int]:
        patch = t.patch_size
        if len(patch) != 2 or patch[0] != patch[1]:
            return None
        # nnU-Net's sliding window (step 0.5) runs this many patches over a 512x512 chip
        tiles = math.prod(1 if s >= MAC_SIZE else math.ceil((MAC_SIZE - s) / (s * 0.5)) + 1 for s in patch)
        return count_macs(t.network, patch[0]) * tiles

    # bytes: the weights alone (nnU-Net's checkpoint adds optimiser state); the threshold: the teacher's own
    # (teacher fit-threshold's for these folds, else the rule's default)
    return Predictor("nnunet", f"nnU-Net teacher ({p})", p, t, t.logits, lambda: t.n_params,
                     lambda: state_dict_bytes(t.network), t.threshold, macs)
