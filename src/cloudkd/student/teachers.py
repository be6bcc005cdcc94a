"""Online teachers for "patient and consistent" distillation: they see exactly the augmented batch the student
sees. Any object with ``logits(x) -> (N, 1, H, W)`` for a normalised ``(N, 4, H, W)`` batch works:

* :class:`cloudkd.teacher.model.NnUNetTeacher` (the trained nnU-Net, in process);
* :class:`OnnxTeacher`: any ONNX segmentation model taking the normalised 4-band input, e.g. a pretrained cloud
  model, so a student can be distilled from it on unlabelled chips (label weight 0);
* the real-trained peer ukis-csmask (optional package), named ``--teacher-onnx ukis-csmask``: an adapter
  (:class:`cloudkd.teacher.peer.PeerTeacher`) for its own input statistics, 256-px tiles and three classes.

Training builds the teacher only when fitting starts, on each process's own device (:func:`online_teacher_factory`,
:meth:`cloudkd.student.module.StudentModule.teacher_from`); what can be checked without loading it is checked
first, before a run folder is touched.

**No leak of validation labels.** nnU-Net teacher fold k is trained on every location-grouped fold but k
(``teacher prepare`` writes nnU-Net's ``splits_final.json`` from the same folds file, fold k of one = fold k of
the other), so of an nnU-Net teacher only the fold equal to the student's ``val_fold`` has never seen the
student's validation labels: it is the default, and others need an explicit override
(:func:`nnunet_teacher_folds`).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.errors import DataError
from .distill import prob_to_logit

#: the name that makes ``--teacher-onnx`` use the installed ukis-csmask peer through its adapter
PEER = "ukis-csmask"


def onnx_teacher_file(path: os.PathLike | str) -> Path:
    """``path`` as a Path, or a DataError when no such file exists."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: ONNX teacher not found")
    return p


class OnnxTeacher:
    """An ONNX model as a teacher. Its input is the normalised batch; its first output is read as

    * ``(N, 1, H, W)`` cloud logits (``output="logits"``) or probabilities (``output="probabilities"``), or
    * ``(N, 2, H, W)`` two-class logits (background, cloud), reduced to ``z_cloud - z_background``.
    """

    def __init__(self, path: os.PathLike | str, output: str = "logits", threads: Optional[int] = None):
        from ..common.onnx import ort_session

        self.path = onnx_teacher_file(path)
        if output not in ("logits", "probabilities"):
            raise ValueError("output must be 'logits' or 'probabilities'")
        try:
            self.session = ort_session(self.path, threads)
        except Exception as exc:
            raise DataError(f"{self.path}: cannot load ONNX model ({exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{self.path}: an ONNX teacher must have one input, this one has {len(inputs)}")
        self.input_name = inputs[0].name
        self.output = output

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        from ..common.onnx import ort_logits

        y = torch.from_numpy(np.asarray(ort_logits(self.session, arr), np.float32))
        if y.ndim != 4 or y.shape[0] != arr.shape[0] or tuple(y.shape[2:]) != tuple(arr.shape[2:]):
            raise DataError(f"{self.path}: output shape {tuple(y.shape)} does not match input {arr.shape}")
        if y.shape[1] == 2:
            y = y[:, 1:2] - y[:, 0:1]
        elif y.shape[1] != 1:
            raise DataError(f"{self.path}: expected 1 or 2 output channels, got {y.shape[1]}")
        elif self.output == "probabilities":
            y = prob_to_logit(y)
        return y.to(x.device)


class RuleCentredTeacher:
    """A teacher whose logits are shifted by its prediction rule's threshold ``t``: ``z - logit(t)``, so that 0.5
    is its decision. A teacher whose fitted threshold is not 0.5 (the 128-epoch nnU-Net is tight at 0.5 and fits
    0.30) otherwise teaches its raw scale: pixel KD copies it (CWD, normalised per channel, does not see a shift)."""

    def __init__(self, teacher, threshold: float):
        from ..common.infer import logit_threshold

        self.teacher = teacher
        self.threshold = float(threshold)
        self.shift = logit_threshold(self.threshold)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.logits(x) - self.shift


def teacher_rule_threshold(workdir: os.PathLike | str, folds: Sequence[int]) -> float:
    """The threshold ``teacher fit-threshold`` recorded for exactly these folds of the nnU-Net teacher in
    ``workdir``; a DataError saying how to fit it when there is none."""
    from ..teacher.model import teacher_record
    from ..teacher.rule import recorded_threshold
    from ..teacher.workspace import Workspace

    ws = Workspace(workdir)
    t = recorded_threshold(teacher_record(ws), folds)
    if t is None:
        fold = list(folds)[0] if len(folds) == 1 else "K"
        raise DataError(f"{ws.root}: --teacher-rule needs the teacher's fitted threshold for folds {list(folds)}, "
                        f"and none is recorded; run: cloudkd teacher fit-threshold --workdir {ws.root} --fold {fold}")
    return t


def load_online_teacher(nnunet_workdir: Optional[os.PathLike | str] = None,
                        onnx: Optional[os.PathLike | str] = None, onnx_output: str = "logits",
                        device: str = "cpu", folds: Optional[Sequence[int]] = None,
                        rule_threshold: Optional[float] = None):
    """The online teacher named by exactly one of ``nnunet_workdir`` / ``onnx`` (None if neither). ``device``:
    where the nnU-Net teacher runs (ONNX teachers run on the CPU and return tensors on the input's device);
    ``folds``: the nnU-Net folds to ensemble (None: every trained fold; training passes
    :func:`nnunet_teacher_folds`'s choice); ``rule_threshold``: the nnU-Net teacher's logits are centred on it
    (:class:`RuleCentredTeacher`)."""
    if rule_threshold is not None and not nnunet_workdir:
        raise ValueError("rule_threshold centres an nnU-Net teacher's logits; give nnunet_workdir")
    if nnunet_workdir and onnx:
        raise ValueError("give one online teacher: an nnU-Net workdir or an ONNX model, not both")
    if onnx and str(onnx) == PEER:
        from ..teacher.peer import PeerTeacher, load

        load()  # a one-line error saying how to install the optional peer
        return PeerTeacher()
    if onnx:
        return OnnxTeacher(onnx, onnx_output)
    if nnunet_workdir:
        from .predictor import load_predictor

        teacher = load_predictor(nnunet_workdir, kind="nnunet", device=device, folds=folds).model
        return teacher if rule_threshold is None else RuleCentredTeacher(teacher, rule_threshold)
    return None


def online_teacher_factory(nnunet_workdir: Optional[os.PathLike | str] = None,
                           onnx: Optional[os.PathLike | str] = None, onnx_output: str = "logits",
                           folds: Optional[Sequence[int]] = None,
                           rule_threshold: Optional[float] = None) -> Callable[[object], object]:
    """``factory(device) -> teacher`` (:func:`load_online_teacher`) for training, which builds the teacher when
    fitting starts on each process's device; first checked without loading anything: one teacher, the ONNX file
    exists, the optional peer is installed (nnU-Net folds: check them with :func:`nnunet_teacher_folds`)."""
    if nnunet_workdir and onnx:
        raise ValueError("give one online teacher: an nnU-Net workdir or an ONNX model, not both")
    if onnx and str(onnx) == PEER:
        from ..teacher.peer import load

        load()
    elif onnx:
        onnx_teacher_file(onnx)
    return partial(load_online_teacher, nnunet_workdir, onnx, onnx_output, folds=folds, rule_threshold=rule_threshold)


def nnunet_teacher_folds(workdir: os.PathLike | str, val_fold: int, val_chip_ids: Sequence[str],
                         folds: Optional[Sequence[int]] = None,
                         allow_leak: bool = False) -> Tuple[List[int], List[str]]:
    """The nnU-Net teacher folds a student validating on ``val_fold`` (chips ``val_chip_ids``) distils from, and
    one warning per fold that has seen those chips' labels: ``(folds, leaks)``.

    Default: ``[val_fold]``, which must be trained ("train teacher fold K first"). ``folds`` chooses others. A
    fold is trained on the validation chips when its training part in the teacher's ``splits_final.json`` holds
    any of them (where that file is missing: when it is not ``val_fold``); such a fold is refused with a
    DataError unless ``allow_leak``, which returns the warnings instead.
    """
    import json

    from ..teacher.model import teacher_record
    from ..teacher.workspace import Workspace

    ws = Workspace(workdir)
    info = teacher_record(ws)
    trained = sorted(int(f) for f in info.get("folds", []))
    chosen = [int(val_fold)] if folds is None else sorted({int(f) for f in folds})
    if not chosen:
        raise DataError("--teacher-folds: give at least one fold")
    missing = [f for f in chosen if f not in trained]
    if missing:
        how = f"train teacher fold {missing[0]} first: cloudkd teacher train --workdir {ws.root} --fold {missing[0]}"
        if folds is None:
            raise DataError(f"{ws.root}: the nnU-Net teacher has no trained fold {val_fold}, the student's validation "
                            f"fold (--val-fold {val_fold}; trained folds: {trained or 'none'}), and its other folds "
                            f"were trained on those validation chips; {how}")
        raise DataError(f"--teacher-folds: fold(s) {missing} not trained in {ws.root} (trained folds: {trained}); "
                        f"{how}")
    from ..teacher.model import check_checkpoint

    for f in chosen:  # a damaged checkpoint (a killed training) is named now, before a run folder is touched
        check_checkpoint(Path(info["model_folder"]) / f"fold_{f}" / "checkpoint_final.pth", f)
    splits_file = ws.preprocessed / str(info.get("dataset_name")) / "splits_final.json"
    splits = json.loads(splits_file.read_text()) if splits_file.is_file() else None
    val = set(val_chip_ids)
    leaks, other_split = [], False
    for f in chosen:
        if splits is not None and f < len(splits):
            seen = len(val & set(splits[f]["train"]))
            if seen:
                leaks.append(f"teacher fold {f} was trained on {seen} of the student's {len(val)} validation chips "
                             f"(fold {val_fold})")
                other_split |= f == val_fold
        elif f != val_fold:
            leaks.append(f"teacher fold {f} was trained on the student's validation fold {val_fold}")
    if leaks and not allow_leak:
        fix = (f"the teacher's folds differ from the student's: prepare and train the teacher with the student's "
               f"--folds" if other_split else f"distil from teacher fold {val_fold} (the default without "
                                              f"--teacher-folds)")
        raise DataError("; ".join(leaks) + ": its targets would carry those validation labels into the student, "
                        f"so val_jaccard and the best checkpoint would flatter it. Either {fix}, or give "
                        "--allow-teacher-leak to accept it")
    return chosen, leaks
