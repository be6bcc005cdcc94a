"""Model specs -> models: the student presets, custom compact U-Nets, and any smp model as a baseline.

A spec is a string, so it can be stored with a checkpoint and rebuilt anywhere:

* ``unet-s`` (or ``unet-xs``, ``unet-m``, ``unet-l``): a :data:`cloudkd.student.unet.PRESETS` preset;
* ``unet:8-16-24-32-72``: a compact U-Net with these stage widths;
* ``smp:Unet:resnet34``: ``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None, in_channels=4,
  classes=1)`` (the On Cloud N benchmark architecture; any smp architecture and encoder name works).

``model_kwargs`` (norm, up, conv for compact U-Nets; any smp keyword) are passed through.
"""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from ..common.sizes import count_params
from .unet import PRESETS, CompactUNet, from_preset


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
