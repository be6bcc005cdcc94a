"""A trained student run folder (``cloudkd train`` / ``distill``) -> its network: the one loader every later
stage uses (predict, export, bench, pack, the real-chip benchmark)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Tuple

import torch

from ..common.errors import DataError
from .models import build_model


def lightning_state(ckpt: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """The network's state dict inside a StudentModule Lightning checkpoint (its ``model.`` entries)."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {k[len("model."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.")}


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
    if not info_path.is_file():
        raise DataError(f"{info_path}: missing; not a student run folder of 'cloudkd train/distill' "
                        f"(or a file in it)")
    info = json.loads(info_path.read_text())
    if p.suffix == ".ckpt":
        return run, info, lightning_state(p)
    weights = run / "student.pt"
    if not weights.is_file():
        raise DataError(f"{weights}: missing weights")
    return run, info, torch.load(weights, map_location="cpu")


def load_student(run: os.PathLike | str) -> torch.nn.Module:
    """Rebuild a trained student (in eval mode) from anything :func:`resolve_run` accepts."""
    _, info, state = resolve_run(run)
    model = build_model(info["model"], model_kwargs=info.get("model_kwargs"))
    model.load_state_dict(state)
    return model.eval()
