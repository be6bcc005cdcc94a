"""A trained student run folder (``cloudkd train`` / ``distill``) -> its network: the one loader every later
stage uses (predict, export, bench, pack, the real-chip benchmark); and the one answer to "which prediction rule
(threshold and dilation) does this model use" (:func:`recorded_rule`), which every command that makes masks from a
model takes as its default."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Tuple

import torch

from ..common.errors import DataError
from .models import build_model


def load_checkpoint(ckpt: os.PathLike | str) -> dict:
    """A StudentModule Lightning checkpoint as a dict (on the CPU), or a one-line DataError when the file is
    empty, truncated or not such a checkpoint."""
    try:
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError ... on a damaged file
        why = (str(exc).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{ckpt}: not a readable checkpoint ({type(exc).__name__}: {why})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        raise DataError(f"{ckpt}: not a Lightning checkpoint of a student run (no state_dict)")
    return ck


def lightning_state(ckpt: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """The network's state dict inside a StudentModule Lightning checkpoint (its ``model.`` entries)."""
    ck = load_checkpoint(ckpt)
    return {k[len("model."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.")}


def interrupted(run: os.PathLike | str) -> bool:
    """A run folder whose training started (its ``run.json``, written when training starts, or a checkpoint in
    ``checkpoints/``) but did not finish (no ``student.json``, the record a run writes last: a run killed while
    it exported its weights has ``student.pt`` but not the record)."""
    run = Path(run)
    if (run / "student.json").is_file():
        return False
    ck = run / "checkpoints"
    return (run / "run.json").is_file() or (ck.is_dir() and any(ck.glob("*.ckpt")))


def interrupted_message(run: os.PathLike | str) -> str:
    """One line on an :func:`interrupted` run: continue it with --resume from its ``last.ckpt``, or, without one,
    start it anew with --force."""
    run = Path(run)
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        return (f"{run}: interrupted: its training did not finish ({last} is there, no student.json); continue it "
                f"with 'cloudkd student train/distill ... --out {run} --resume' (or start it anew with --force)")
    return (f"{run}: interrupted: its training did not finish and left no {last} to resume from; start it anew with "
            f"'cloudkd student train/distill ... --out {run} --force'")


def resolve_run(checkpoint: os.PathLike | str) -> Tuple[Path, dict, Dict[str, torch.Tensor]]:
    """(run folder, student.json as a dict, state dict) from a run folder of 'cloudkd train/distill', its
    student.pt / student.json, or a Lightning .ckpt in its checkpoints/ folder (weights from that checkpoint)."""
    p = Path(checkpoint)
    if not p.exists():
        raise DataError(f"{p}: checkpoint not found")
    if p.is_dir():
        run = p
    elif p.suffix == ".ckpt":
        run = p.parent.parent
    else:
        run = p.parent
    info_path = run / "student.json"
    if not info_path.is_file() and interrupted(run):
        raise DataError(interrupted_message(run))
    if not info_path.is_file():
        raise DataError(f"{info_path}: missing; not a student run folder of 'cloudkd train/distill' "
                        f"(or a file in it)")
    try:
        info = json.loads(info_path.read_text())
    except ValueError as exc:
        raise DataError(f"{info_path}: not readable JSON ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("model"), str):
        raise DataError(f"{info_path}: not a student run's record (no model)")
    if p.suffix == ".ckpt":
        return run, info, lightning_state(p)
    weights = run / "student.pt"
    if not weights.is_file():
        raise DataError(f"{weights}: missing weights")
    return run, info, load_weights(weights)


def load_weights(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """A student's plain state dict (``student.pt``), or a one-line DataError when the file is empty, truncated
    or not a state dict (torch raises EOFError, which the command line would take for Ctrl-D, UnpicklingError,
    RuntimeError ...)."""
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{path}: not readable weights ({type(exc).__name__}: {why}); train the run again") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: not a state dict of a student's weights")
    return state


#: the key of ``student.json`` that holds the prediction rule fitted after training (``cloudkd student fit-rule``):
#: ``{"threshold", "dilate", ...}``; a retrained run writes its record anew, without it
RULE_KEY = "rule"


def run_rule(info: dict, where: str = "student.json") -> Tuple[float, int]:
    """(threshold, dilation in pixels) of the prediction rule a run recorded (``info``: its ``student.json``):
    the rule fitted on its validation chips (:data:`RULE_KEY`) where there is one, else the training config's
    threshold (its validation scored at it) and no dilation; runs from before either was recorded: the rule's
    defaults. A recorded value that is not a threshold in (0, 1) or a whole number of pixels >= 0: a one-line
    DataError naming ``where``."""
    from ..common.infer import DEFAULT_DILATE, DEFAULT_THRESHOLD, check_dilate, logit_threshold

    rule = info.get(RULE_KEY) if isinstance(info.get(RULE_KEY), dict) else {}
    t = rule.get("threshold", (info.get("config") or {}).get("threshold"))
    d = rule.get("dilate", DEFAULT_DILATE)
    try:
        t = DEFAULT_THRESHOLD if t is None else float(t)
        logit_threshold(t)
        d = check_dilate(d)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: not a recorded prediction rule ({exc})") from None
    return t, d


def run_threshold(info: dict) -> float:
    """The threshold of the rule a run recorded (:func:`run_rule`)."""
    return run_rule(info)[0]


def recorded_rule(model: os.PathLike | str) -> Tuple[float, int]:
    """(threshold, dilation in pixels) of the prediction rule a model was made for: a student run (its folder,
    student.pt / student.json or a .ckpt in it) -> :func:`run_rule`; an ``.onnx`` file exported by ``cloudkd
    onboard export`` -> the rule in its metadata; anything else (an nnU-Net work folder, a file without a record)
    -> the rule's defaults."""
    from ..common.infer import DEFAULT_DILATE, DEFAULT_THRESHOLD

    p = Path(model)
    if p.suffix == ".onnx" and p.is_file():
        from ..common.onnx import onnx_rule, ort_session

        t, d = onnx_rule(ort_session(p))
        return DEFAULT_THRESHOLD if t is None else t, DEFAULT_DILATE if d is None else d
    run = p if p.is_dir() else p.parent.parent if p.suffix == ".ckpt" else p.parent
    info_path = run / "student.json"
    if not info_path.is_file():
        return DEFAULT_THRESHOLD, DEFAULT_DILATE
    try:
        info = json.loads(info_path.read_text())
    except ValueError as exc:
        raise DataError(f"{info_path}: not readable JSON ({exc})") from None
    return run_rule(info if isinstance(info, dict) else {}, str(info_path))


def recorded_threshold(model: os.PathLike | str) -> float:
    """The threshold of :func:`recorded_rule`."""
    return recorded_rule(model)[0]


def load_student(run: os.PathLike | str) -> torch.nn.Module:
    """Rebuild a trained student (in eval mode) from anything :func:`resolve_run` accepts."""
    folder, info, state = resolve_run(run)
    try:
        model = build_model(info["model"], model_kwargs=info.get("model_kwargs"))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder / 'student.json'}: cannot build its model {info['model']!r} ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        why = (str(exc).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{folder / 'student.pt'}: the weights do not fit the model {info['model']!r} of "
                        f"student.json ({why})") from None
    return model.eval()
