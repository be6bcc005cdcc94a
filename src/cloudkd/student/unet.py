"""The compact student U-Net family, called like smp models: ``CompactUNet(in_channels=4, classes=1, ...)``.

A plain U-Net: each stage is two 3x3 conv -> norm -> ReLU blocks; 2x2 max-pooling between encoder stages; the
decoder upsamples (bilinear + 1x1 conv, or a 2x2 transposed conv), concatenates the skip and applies two conv
blocks; a 1x1 head gives ``classes`` logits. Configurable: stage widths (depth = their number), normalisation
(``batch``, ``group``, ``none``), upsampling (``bilinear``, ``transpose``) and convolutions (``standard`` or
depthwise-``separable``, far fewer multiply-accumulates for on-board use), and a space-to-depth ``stem``: with
``stem=2`` (or 4) the input is folded into 2x2 (4x4) blocks (``PixelUnshuffle``: 4 bands -> 16 (64) channels at
half (quarter) resolution), the whole U-Net runs at that resolution, and the logits are upsampled bilinearly to
the input size, which removes the costly full-resolution layers. ``refine=C`` (with a stem) adds a light
full-resolution head after that upsampling: a 3x3 conv on the input bands and the upsampled logits (C channels),
ReLU, 1x1 back to ``classes``, added to the logits, so outlines can follow the full-resolution pixels again.

This module imports only torch: it travels inside the submission zip unchanged (Python 3.9, torch 1.8).
"""

from typing import Dict, Sequence

import torch
from torch import nn
import torch.nn.functional as F

#: Named presets (keyword arguments of CompactUNet). ``unet-s`` is the on-board student: <= 165,000 parameters,
#: about 280x fewer than nnU-Net's 46.3 M-parameter 2d plan for 512x512 chips.
PRESETS: Dict[str, dict] = {
    "unet-xs": {"widths": (4, 8, 16, 32, 32)},
    "unet-s": {"widths": (8, 16, 24, 32, 72)},
    "unet-m": {"widths": (16, 32, 48, 64, 128)},
    "unet-l": {"widths": (24, 48, 96, 128, 192)},
    # on-board candidates (benchmarks/student_candidates.py): the U-Net at 1/2 or 1/4 resolution, <= 165,000 params
    "unet-s2d2": {"widths": (16, 24, 32, 72), "stem": 2},
    "unet-s2d4": {"widths": (24, 32, 72), "stem": 4},
    "unet-s2d2r": {"widths": (16, 24, 32, 72), "stem": 2, "refine": 8},
}


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(4, ch), ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch, group, none)")


class ConvBlock(nn.Sequential):
    """3x3 conv (standard or depthwise-separable) -> norm -> ReLU."""

    def __init__(self, cin: int, cout: int, norm: str, conv: str):
        bias = norm == "none"
        if conv == "standard":
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=bias)]
        elif conv == "separable":
            layers = [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=bias)]
        else:
            raise ValueError(f"unknown conv {conv!r} (standard, separable)")
        super().__init__(*layers, _norm(norm, cout), nn.ReLU(inplace=True))


class Stage(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, conv: str):
        super().__init__(ConvBlock(cin, cout, norm, conv), ConvBlock(cout, cout, norm, conv))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        if mode == "bilinear":
            self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        elif mode == "transpose":
            self.proj = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
        else:
            raise ValueError(f"unknown upsampling {mode!r} (bilinear, transpose)")
        self.mode = mode

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.mode == "bilinear":
            return self.proj(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        x = self.proj(x)
        if x.shape[-2:] != size:  # odd input sizes
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class CompactUNet(nn.Module):
    #: run on CPU in channels-last (NHWC) memory layout (see forward); a class switch for benchmarks
    nhwc_on_cpu = True

    def __init__(self, in_channels: int = 4, classes: int = 1, widths: Sequence[int] = (8, 16, 24, 32, 72),
                 norm: str = "batch", up: str = "bilinear", conv: str = "standard", stem: int = 1,
                 refine: int = 0):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths needs >= 2 positive stage widths, got {widths}")
        if stem not in (1, 2, 4):
            raise ValueError(f"stem must be 1 (none), 2 or 4 (space-to-depth factor), got {stem}")
        self.config = {"in_channels": in_channels, "classes": classes, "widths": widths, "norm": norm, "up": up,
                       "conv": conv}
        if refine and stem == 1:
            raise ValueError("refine needs a space-to-depth stem (stem=2 or 4): without one the U-Net already "
                             "predicts at full resolution")
        if refine < 0:
            raise ValueError(f"refine must be >= 0 channels, got {refine}")
        if stem != 1:  # runs without a stem keep the config (and main.py kwargs) they always had
            self.config["stem"] = stem
        if refine:
            self.config["refine"] = refine
        self.stem = nn.PixelUnshuffle(stem) if stem > 1 else None
        self.encoder = nn.ModuleList()
        cin = in_channels * stem * stem
        for i, w in enumerate(widths):
            # the first stage stays standard whatever ``conv`` asks: a depthwise 3x3 on the few input bands
            # cannot mix them, and that stage costs little; every later stage follows ``conv``
            self.encoder.append(Stage(cin, w, norm, conv if i > 0 else "standard"))
            cin = w
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w_skip in reversed(widths[:-1]):
            self.ups.append(Up(cin, w_skip, up))
            self.decoder.append(Stage(2 * w_skip, w_skip, norm, conv))
            cin = w_skip
        self.head = nn.Conv2d(cin, classes, 1)
        self.refine = nn.Sequential(nn.Conv2d(in_channels + classes, refine, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(refine, classes, 1)) if refine else None

    @property
    def depth(self) -> int:
        return len(self.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc_on_cpu and x.device.type == "cpu" and x.dim() == 4:
            # NHWC: oneDNN's kernels for these narrow layers are about 2x faster in it than in NCHW, in training
            # and inference (benchmarks/student_layout.py); the arithmetic is the same up to float rounding
            x = x.contiguous(memory_format=torch.channels_last)
        size = x.shape[-2:]
        bands = x
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoder):
            skip = skips.pop()
            x = dec(torch.cat([up(x, skip.shape[-2:]), skip], dim=1))
        logits = self.head(x)
        if self.stem is not None:  # predicted at 1/stem resolution: upsample the logits, not the features
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.refine is not None:
            logits = logits + self.refine(torch.cat([bands, logits], dim=1))
        return logits


def from_preset(name: str, in_channels: int = 4, classes: int = 1, **overrides) -> CompactUNet:
    if name not in PRESETS:
        raise ValueError(f"unknown student preset {name!r}; presets: {', '.join(PRESETS)}")
    return CompactUNet(in_channels=in_channels, classes=classes, **{**PRESETS[name], **overrides})
