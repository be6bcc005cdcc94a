"""nnU-Net trainer with a user-stated compute budget, found by nnU-Net through ``nnUNet_extTrainer``.

``cloudkd teacher train`` sets these environment variables before nnU-Net builds the trainer:

* ``CLOUDKD_NNUNET_EPOCHS`` (default 1000, nnU-Net's), ``CLOUDKD_NNUNET_ITERS`` (iterations per epoch, default
  250), ``CLOUDKD_NNUNET_VAL_ITERS`` (validation iterations per epoch, default 50);
* ``CLOUDKD_NNUNET_SAVE_EVERY`` (checkpoint period in epochs, default 1, so an interrupted CPU run resumes
  from the last epoch);
* ``CLOUDKD_NNUNET_SEED`` (optional): seeds Python, numpy and torch, which makes a CPU run with in-process data
  augmentation (``nnUNet_n_proc_DA=0``) reproducible. nnU-Net itself does not seed.

* ``CLOUDKD_NNUNET_INTENSITY_AUG`` (default 0): nnU-Net's intensity augmentations (brightness and contrast
  per channel, gamma, inverted gamma) are left out of training, as the student's pipeline leaves them out: the
  inputs are fixed-normalised reflectance, and absolute brightness and the flat cloud spectrum are what separate
  cloud from bright ground (a per-band brightness change alters the spectrum; an inverted gamma turns white
  cloud dark). 1 restores nnU-Net's defaults. Spatial transforms, noise, blur, low resolution and mirroring stay.

The recipe knobs (each unset = nnU-Net's default; ``cloudkd.teacher.plans.Budget`` sets them, and the teacher
ablation study ``benchmarks/teacher_ablation.py`` varies them one at a time):

* ``CLOUDKD_NNUNET_OPTIMIZER``: ``sgd`` (nnU-Net's SGD, Nesterov momentum 0.99, poly schedule) or ``adamw``
  (AdamW with a cosine schedule over the epochs, stepped per epoch like nnU-Net's poly);
  ``CLOUDKD_NNUNET_LR`` its initial rate (default: 1e-2 for sgd, 3e-3 for adamw, the student's rate),
  ``CLOUDKD_NNUNET_WEIGHT_DECAY`` (default: nnU-Net's 3e-5 for sgd, the student's 1e-4 for adamw);
* ``CLOUDKD_NNUNET_LOSS``: ``dice_ce`` (nnU-Net's Dice + cross-entropy) or ``ce`` (cross-entropy alone);
* ``CLOUDKD_NNUNET_DEEP_SUPERVISION``: 1 (nnU-Net's default) or 0;
* ``CLOUDKD_NNUNET_SPATIAL``: a factor on the probabilities of nnU-Net's spatial rotation and scaling (0.2 each
  by default; 0 turns them off, 2.5 applies each to half the patches); mirroring stays;
* ``CLOUDKD_NNUNET_OVERSAMPLE``: the share of each batch sampled around foreground (nnU-Net's 0.33).

Patch size, batch size and network width come from the plans configuration (``cloudkd teacher train`` adds a
budget configuration to nnU-Net's plans); everything else is nnU-Net's default trainer, unchanged.
"""

import math
import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from cloudkd.teacher.plans import LOSSES, OPTIMIZERS

#: the intensity transforms that change absolute reflectance or the spectrum (batchgeneratorsv2 class names)
INTENSITY_TRANSFORMS = ("MultiplicativeBrightnessTransform", "ContrastTransform", "GammaTransform")


def without_intensity(compose):
    """nnU-Net's training transforms (a ComposeTransforms) without the brightness, contrast and gamma steps."""
    kept = [t for t in compose.transforms
            if type(getattr(t, "transform", t)).__name__ not in INTENSITY_TRANSFORMS]
    compose.transforms = kept
    return compose


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def _env_choice(name: str, choices, default: str) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(choices)}")
    return value


def scale_spatial(compose, factor: float):
    """nnU-Net's training transforms with the probabilities of its spatial rotation and scaling multiplied by
    ``factor`` (capped at 1; 0 turns both off). The crop to the patch size stays."""
    for t in compose.transforms:
        t = getattr(t, "transform", t)
        if type(t).__name__ == "SpatialTransform":
            t.p_rotation = min(1.0, t.p_rotation * factor)
            t.p_scaling = min(1.0, t.p_scaling * factor)
    return compose


class CosineLR:
    """The cosine schedule stepped like nnU-Net's PolyLRScheduler: ``step(epoch)`` sets
    ``initial_lr * (1 + cos(pi * epoch / max_steps)) / 2``."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int):
        self.optimizer, self.initial_lr, self.max_steps = optimizer, initial_lr, max_steps
        self.ctr = 0
        self.step(0)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.initial_lr * 0.5 * (1.0 + math.cos(math.pi * min(current_step, self.max_steps) / self.max_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr


class nnUNetTrainerCloudKD(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed = os.environ.get("CLOUDKD_NNUNET_SEED")
        if seed not in (None, ""):
            random.seed(int(seed))
            np.random.seed(int(seed))
            torch.manual_seed(int(seed))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("CLOUDKD_NNUNET_EPOCHS", self.num_epochs)
        self.num_iterations_per_epoch = _env_int("CLOUDKD_NNUNET_ITERS", self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = _env_int("CLOUDKD_NNUNET_VAL_ITERS", self.num_val_iterations_per_epoch)
        self.save_every = _env_int("CLOUDKD_NNUNET_SAVE_EVERY", 1)
        self.cloudkd_optimizer = _env_choice("CLOUDKD_NNUNET_OPTIMIZER", tuple(OPTIMIZERS), "sgd")
        lr, wd = OPTIMIZERS[self.cloudkd_optimizer]
        self.initial_lr = _env_float("CLOUDKD_NNUNET_LR", lr)
        self.weight_decay = _env_float("CLOUDKD_NNUNET_WEIGHT_DECAY", wd)
        self.cloudkd_loss = _env_choice("CLOUDKD_NNUNET_LOSS", LOSSES, "dice_ce")
        self.enable_deep_supervision = _env_int("CLOUDKD_NNUNET_DEEP_SUPERVISION", 1) == 1
        self.oversample_foreground_percent = _env_float("CLOUDKD_NNUNET_OVERSAMPLE",
                                                        self.oversample_foreground_percent)

    def configure_optimizers(self):
        if self.cloudkd_optimizer == "sgd":
            return super().configure_optimizers()
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, CosineLR(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self):
        loss = super()._build_loss()
        if self.cloudkd_loss == "ce":  # nnU-Net's compound loss computes no Dice term at weight 0
            getattr(loss, "loss", loss).weight_dice = 0
        return loss

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        factor = _env_float("CLOUDKD_NNUNET_SPATIAL", 1.0)
        if factor != 1.0:
            scale_spatial(transforms, factor)
        if os.environ.get("CLOUDKD_NNUNET_INTENSITY_AUG", "0") == "1":
            return transforms
        return without_intensity(transforms)
