"""Model specs -> models: the student presets, custom compact U-Nets, and any smp model as a baseline.

A spec is a string, so it can be stored with a checkpoint and rebuilt anywhere:

* ``unet-s`` (or ``unet-xs``, ``unet-m``, ``unet-l``): a :data:`cloudkd.student.unet.PRESETS` preset;
* ``unet:8-16-24-32-72``: a compact U-Net with these stage widths;
* ``smp:Unet:resnet34``: ``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None, in_channels=4,
  classes=1)`` (the On Cloud N benchmark architecture; any smp architecture and encoder name works).

``model_kwargs`` (norm, up, conv for compact U-Nets; any smp keyword) are passed through.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from torch import nn

from ..data.chips import DataError
from .unet import PRESETS, CompactUNet, count_params, from_preset


def build_model(spec: str, in_channels: int = 4, classes: int = 1, model_kwargs: Optional[dict] = None) -> nn.Module:
    kw = dict(model_kwargs or {})
    if spec in PRESETS:
        return from_preset(spec, in_channels=in_channels, classes=classes, **kw)
    if spec.startswith("unet:"):
        try:
            widths = [int(w) for w in spec[5:].split("-")]
        except ValueError:
            raise ValueError(f"bad compact U-Net spec {spec!r}; expected e.g. unet:8-16-24-32-72") from None
        return CompactUNet(in_channels=in_channels, classes=classes, widths=widths, **kw)
    if spec.startswith("smp:"):
        import segmentation_models_pytorch as smp

        parts = spec.split(":")
        if len(parts) != 3 or not hasattr(smp, parts[1]):
            raise ValueError(f"bad smp spec {spec!r}; expected smp:<Architecture>:<encoder>, e.g. smp:Unet:resnet34")
        kw.setdefault("encoder_weights", None)  # no downloads: weights come from training here
        return getattr(smp, parts[1])(parts[2], in_channels=in_channels, classes=classes, **kw)
    raise ValueError(f"unknown model {spec!r}: use a preset ({', '.join(PRESETS)}), unet:W1-W2-..., or "
                     f"smp:<Architecture>:<encoder>")


def list_presets() -> Dict[str, int]:
    """Preset name -> parameter count (4 input bands, 1 output)."""
    return {name: count_params(from_preset(name)) for name in PRESETS}


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
