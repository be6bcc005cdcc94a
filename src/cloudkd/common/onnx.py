"""Running an ONNX segmentation model with ONNX Runtime on the CPU: one session recipe for exported students,
ONNX teachers, the benchmark and whole scenes.

:func:`ort_logits` is the one place a session is driven: a model exported with a fixed batch (``cloudkd onboard
export``'s ``model_fp32_b1.onnx``, what a flight computer loads) is run in slices of its batch, and a fixed chip
size that the input does not have is refused in one line naming the model.

An exported model carries its prediction rule in its metadata: the threshold (:data:`THRESHOLD_KEY`) and the
dilation in pixels (:data:`DILATE_KEY`), written by ``cloudkd onboard export`` from the run (:func:`stamp_rule`) and
read by :func:`onnx_rule`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .errors import DataError

#: the ONNX metadata key holding the cloud probability threshold the model was exported for
THRESHOLD_KEY = "cloudkd_threshold"
#: the ONNX metadata key holding the dilation (pixels) of the prediction rule the model was exported for
DILATE_KEY = "cloudkd_dilate"


def ort_session(path: os.PathLike | str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads, one inter-op thread; quiet logging)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _fixed(dim) -> Optional[int]:
    """An input dimension of fixed size (an int), else None (a symbolic or unknown one)."""
    return dim if isinstance(dim, int) and dim > 0 else None


def fixed_size_problem(session, height: int, width: int) -> Optional[str]:
    """Why the model of ``session`` cannot take inputs of ``height`` x ``width`` pixels (a fixed input size that
    differs), or None."""
    shape = list(session.get_inputs()[0].shape or [])
    if len(shape) != 4:
        return None
    want = [_fixed(d) for d in shape[2:]]
    if any(w is not None and w != g for w, g in zip(want, (height, width))):
        return (f"takes inputs of fixed size {shape[2]}x{shape[3]} pixels, got {height}x{width} (export it with "
                f"--size {width}, or use the dynamic-shape model_fp32.onnx)")
    return None


def ort_logits(session, batch: np.ndarray) -> np.ndarray:
    """The first output of ``session`` for a float32 batch (N, C, H, W) fed to its first input. A model with a
    fixed batch size ``b`` runs the batch ``b`` items at a time (a last, shorter slice padded with zeros that are
    dropped again); a model with a fixed height and width that the batch does not have is a :class:`DataError`."""
    inp = session.get_inputs()[0]
    x = np.ascontiguousarray(batch, np.float32)
    shape = list(inp.shape) if inp.shape is not None else []
    problem = fixed_size_problem(session, *x.shape[2:]) if x.ndim == 4 else None
    if problem:
        raise DataError(f"{getattr(session, '_model_path', None) or 'the ONNX model'}: {problem}")
    b = _fixed(shape[0]) if shape else None
    if b is None or b == len(x):
        return session.run(None, {inp.name: x})[0]
    out = []
    for i in range(0, len(x), b):
        part = x[i:i + b]
        n = len(part)
        if n < b:
            part = np.concatenate([part, np.zeros((b - n,) + part.shape[1:], np.float32)])
        out.append(session.run(None, {inp.name: part})[0][:n])
    return np.concatenate(out)


def onnx_rule(session) -> Tuple[Optional[float], Optional[int]]:
    """(threshold, dilation in pixels) an exported model carries in its metadata (:data:`THRESHOLD_KEY`,
    :data:`DILATE_KEY`); None for one it does not carry (or carries unreadable)."""
    try:
        meta = session.get_modelmeta().custom_metadata_map
    except AttributeError:
        return None, None
    t, d = meta.get(THRESHOLD_KEY), meta.get(DILATE_KEY)
    try:
        t = None if t is None else float(t)
    except ValueError:
        t = None
    try:
        d = None if d is None else int(d)
    except ValueError:
        d = None
    return t, None if d is None or d < 0 else d


def stamp_rule(path: os.PathLike | str, threshold: float, dilate: int = 0) -> Path:
    """Record the prediction rule (``threshold``, ``dilate`` pixels) in the metadata of the ONNX model at
    ``path`` (rewritten atomically)."""
    import onnx

    from .io import atomic_write

    model = onnx.load(str(path))
    for p in [p for p in model.metadata_props if p.key in (THRESHOLD_KEY, DILATE_KEY)]:
        model.metadata_props.remove(p)
    model.metadata_props.add(key=THRESHOLD_KEY, value=repr(float(threshold)))
    model.metadata_props.add(key=DILATE_KEY, value=str(int(dilate)))
    return atomic_write(path, lambda tmp: onnx.save(model, str(tmp)), suffix=".onnx")


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
