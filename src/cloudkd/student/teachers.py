"""Online teachers for "patient and consistent" distillation: they see exactly the augmented batch the student
sees. Any object with ``logits(x) -> (N, 1, H, W)`` for a normalised ``(N, 4, H, W)`` batch works:

* :class:`cloudkd.teacher.model.NnUNetTeacher` (the trained nnU-Net, in process);
* :class:`OnnxTeacher`: any ONNX segmentation model taking the normalised 4-band input, e.g. a pretrained cloud
  model, so a student can be distilled from it on unlabelled chips (label weight 0);
* the real-trained peer ukis-csmask (optional package), named ``--teacher-onnx ukis-csmask``: an adapter
  (:class:`cloudkd.teacher.peer.PeerTeacher`) for its own input statistics, 256-px tiles and three classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..common.errors import DataError
from .distill import prob_to_logit

#: the name that makes ``--teacher-onnx`` use the installed ukis-csmask peer through its adapter
PEER = "ukis-csmask"


class OnnxTeacher:
    """An ONNX model as a teacher. Its input is the normalised batch; its first output is read as

    * ``(N, 1, H, W)`` cloud logits (``output="logits"``) or probabilities (``output="probabilities"``), or
    * ``(N, 2, H, W)`` two-class logits (background, cloud), reduced to ``z_cloud - z_background``.
    """

    def __init__(self, path: os.PathLike | str, output: str = "logits", threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: ONNX teacher not found")
        if output not in ("logits", "probabilities"):
            raise ValueError("output must be 'logits' or 'probabilities'")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DataError(f"{self.path}: cannot load ONNX model ({exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{self.path}: an ONNX teacher must have one input, this one has {len(inputs)}")
        self.input_name = inputs[0].name
        self.output = output

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        y = torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: arr})[0], np.float32))
        if y.ndim != 4 or y.shape[0] != arr.shape[0] or tuple(y.shape[2:]) != tuple(arr.shape[2:]):
            raise DataError(f"{self.path}: output shape {tuple(y.shape)} does not match input {arr.shape}")
        if y.shape[1] == 2:
            y = y[:, 1:2] - y[:, 0:1]
        elif y.shape[1] != 1:
            raise DataError(f"{self.path}: expected 1 or 2 output channels, got {y.shape[1]}")
        elif self.output == "probabilities":
            y = prob_to_logit(y)
        return y.to(x.device)


def load_online_teacher(nnunet_workdir: Optional[os.PathLike | str] = None,
                        onnx: Optional[os.PathLike | str] = None, onnx_output: str = "logits",
                        device: str = "cpu"):
    """The online teacher named by exactly one of ``nnunet_workdir`` / ``onnx`` (None if neither)."""
    if nnunet_workdir and onnx:
        raise ValueError("give one online teacher: an nnU-Net workdir or an ONNX model, not both")
    if onnx and str(onnx) == PEER:
        from ..teacher.peer import PeerTeacher, load

        load()  # a one-line error saying how to install the optional peer
        return PeerTeacher()
    if onnx:
        return OnnxTeacher(onnx, onnx_output)
    if nnunet_workdir:
        from ..teacher.model import NnUNetTeacher
        from ..teacher.workspace import Workspace

        return NnUNetTeacher.from_workspace(Workspace(nnunet_workdir), device=device)
    return None
