"""Losses: the hard-label loss and knowledge-distillation losses on the teacher's cloud logits.

All maps are binary-segmentation logits of shape (N, 1, H, W); the teacher side is a logit map too (online
teachers give logits; offline soft labels are probabilities p, turned into logits with
:func:`prob_to_logit`, clipped at the uint8 quantisation step so 0 and 1 stay finite).

* **Hard loss** ``bce_dice``: binary cross-entropy + (1 - soft Dice over the batch) on the labels; optionally
  boundary-tolerant (``boundary_ignore`` px on both sides of every label outline left out).
* **Pixel KD** ``pixel_kd`` (Hinton et al. 2015, per pixel): with temperature T,
  ``T^2 * mean_pixels KL(Bern(sigmoid(z_t/T)) || Bern(sigmoid(z_s/T)))``. Zero when the student equals the
  teacher; its gradient w.r.t. the student logit is ``T * (sigmoid(z_s/T) - sigmoid(z_t/T)) / n_pixels``, i.e.
  it pulls the student's probability towards the teacher's. T > 1 weights the teacher's uncertain pixels (thin
  cloud, edges) more.
* **Channel-wise distribution KD** ``cwd`` (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for
  Dense Prediction"): each channel's logit map is turned into a spatial distribution with a softmax over all
  H x W positions (temperature T) and the student's distribution is matched to the teacher's with KL, times
  T^2. For a binary map the two channels are the cloud logit and its negation, ``(z, -z)``, so cloud and
  background spatial distributions are both matched, each at temperature T on the logit z (a split into
  ``(z/2, -z/2)`` would make the effective temperature 2T while the loss is scaled by T^2). It transfers *where*
  the teacher puts cloud mass rather than per-pixel values.

**Teacher logits are capped** at ``±LOGIT_CAP`` (6.23, the logit of the highest soft-label level, 1 - 1/510)
for offline and online teachers alike (:func:`cap_logits`): offline soft labels cannot store more confidence
than that, so an online teacher is held to the same targets and the two modes differ only in where the teacher
runs (before training on whole chips, or on each augmented batch).

:class:`LossConfig` combines them: ``label_weight * bce_dice + kd_weight * kd_loss``. ``label_weight = 0``
distils from a teacher alone (unlabelled chips).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .config import TrainConfig as C

#: soft labels are stored with 255 levels; probabilities are clipped half a level away from 0 and 1
PROB_EPS = 1.0 / 510.0
KD_LOSSES = ("pixel", "cwd")
#: the chips the KD loss covers (:attr:`LossConfig.kd_on`)
KD_ON = ("all", "unlabelled")


#: the largest teacher logit either mode uses: logit(1 - PROB_EPS) = log(509)
LOGIT_CAP = math.log((1.0 - PROB_EPS) / PROB_EPS)


def prob_to_logit(p: torch.Tensor, eps: float = PROB_EPS) -> torch.Tensor:
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def cap_logits(z: torch.Tensor) -> torch.Tensor:
    """Teacher logits clipped to ±LOGIT_CAP (what an offline soft label can hold)."""
    return z.clamp(-LOGIT_CAP, LOGIT_CAP)


def boundary_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean (N, 1, H, W): pixels within ``width`` px (Chebyshev) of a change of label, on either side."""
    k = 2 * width + 1
    hi = F.max_pool2d(target, k, stride=1, padding=width)
    lo = -F.max_pool2d(-target, k, stride=1, padding=width)
    return hi != lo


def bce_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, ignore_band: int = 0) -> torch.Tensor:
    """BCE + (1 - soft Dice over the batch). ``ignore_band`` > 0 leaves out the pixels within that many px of
    a label outline (a boundary-tolerant loss for labels whose outlines are drawn loosely)."""
    if ignore_band <= 0:
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        dice = (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
        return bce + (1.0 - dice)
    w = (~boundary_band(target, ignore_band)).to(logits.dtype)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * w
    t = target * w
    dice = (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)
    return bce + (1.0 - dice)


def pixel_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Binary KL(teacher || student) per pixel with temperature, mean over pixels, times T^2."""
    t = temperature
    zs, zt = student / t, teacher / t
    pt = torch.sigmoid(zt)
    # KL = pt*(log pt - log ps) + (1-pt)*(log(1-pt) - log(1-ps)), written with logsigmoid for stability
    kl = pt * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - pt) * (F.logsigmoid(-zt) - F.logsigmoid(-zs))
    return kl.mean() * t * t


def cwd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Channel-wise distribution KD: spatial softmax per channel, KL(teacher || student), times T^2."""
    t = temperature
    if student.shape[1] == 1:  # binary: cloud and background channels (z, -z), each at temperature T on z
        student = torch.cat([student, -student], dim=1)
        teacher = torch.cat([teacher, -teacher], dim=1)
    n, c = student.shape[:2]
    s = F.log_softmax(student.reshape(n, c, -1) / t, dim=-1)
    q = F.log_softmax(teacher.reshape(n, c, -1) / t, dim=-1)
    kl = (q.exp() * (q - s)).sum(-1)  # (N, C)
    return kl.mean() * t * t


@dataclass
class LossConfig:
    label_weight: float = C.label_weight
    kd_weight: float = C.kd_weight
    kd: str = C.kd
    temperature: float = C.temperature
    boundary_ignore: int = C.boundary_ignore  # px around label outlines left out of the hard loss
    #: the chips the KD loss covers in batches that mix labelled and unlabelled chips: ``all``, or ``unlabelled``
    #: (a teacher that is not trained on these labels, e.g. the real-trained peer, then teaches only the chips
    #: that have no label, and the labels alone teach the rest)
    kd_on: str = C.kd_on

    def __post_init__(self):
        if self.kd not in KD_LOSSES:
            raise ValueError(f"unknown KD loss {self.kd!r}; choose one of {KD_LOSSES}")
        if self.label_weight < 0 or self.kd_weight < 0 or self.label_weight + self.kd_weight == 0:
            raise ValueError("loss weights must be >= 0 and not both 0")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.boundary_ignore < 0:
            raise ValueError("boundary_ignore must be >= 0 pixels")
        if self.kd_on not in KD_ON:
            raise ValueError(f"kd_on must be one of {KD_ON}, got {self.kd_on!r}")

    def __call__(self, logits: torch.Tensor, target: Optional[torch.Tensor] = None,
                 teacher_logits: Optional[torch.Tensor] = None, labelled: Optional[torch.Tensor] = None) -> dict:
        """Total loss and its parts (dict of tensors: ``loss``, ``hard``, ``kd``). ``labelled`` (N values of 0/1,
        batches mixing labelled and unlabelled chips): the loss on labels is taken over the labelled samples only
        (0 when there is none); the KD loss over all, or with ``kd_on="unlabelled"`` over the unlabelled ones
        (0 when there is none; without ``labelled`` every chip counts as labelled)."""
        parts = {}
        total = logits.new_zeros(())
        if self.label_weight > 0:
            if target is None:
                raise ValueError("label_weight > 0 needs labels")
            if labelled is not None:
                keep = labelled.reshape(-1) > 0.5
                parts["hard"] = bce_dice(logits[keep], target[keep], ignore_band=self.boundary_ignore) \
                    if bool(keep.any()) else logits.sum() * 0.0
            else:
                parts["hard"] = bce_dice(logits, target, ignore_band=self.boundary_ignore)
            total = total + self.label_weight * parts["hard"]
        if self.kd_weight > 0:
            if teacher_logits is None:
                raise ValueError("kd_weight > 0 needs teacher logits")
            fn = pixel_kd if self.kd == "pixel" else cwd
            if self.kd_on == "unlabelled":
                take = labelled.reshape(-1) < 0.5 if labelled is not None else \
                    torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
                parts["kd"] = fn(logits[take], teacher_logits[take].detach(), self.temperature) \
                    if bool(take.any()) else logits.sum() * 0.0
            else:
                parts["kd"] = fn(logits, teacher_logits.detach(), self.temperature)
            total = total + self.kd_weight * parts["kd"]
        parts["loss"] = total
        return parts
