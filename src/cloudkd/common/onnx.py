"""Running an ONNX segmentation model with ONNX Runtime on the CPU: one session recipe for exported students,
ONNX teachers, the benchmark and whole scenes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np


def ort_session(path: os.PathLike | str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads, one inter-op thread; quiet logging)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(session, batch: np.ndarray) -> np.ndarray:
    """The first output of ``session`` for a float32 batch fed to its first input."""
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)})[0]


class OnnxModel:
    """An exported model called like the PyTorch one (torch tensor in, logits tensor out), e.g. for
    :func:`cloudkd.student.predict.predict_folder`."""

    def __init__(self, path: os.PathLike | str, threads: Optional[int] = None):
        self.path = Path(path)
        self.session = ort_session(path, threads)

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, x):
        import torch

        return torch.from_numpy(ort_logits(self.session, x.detach().cpu().numpy()))
