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

Patch size, batch size and network width come from the plans configuration (``cloudkd teacher train`` adds a
budget configuration to nnU-Net's plans); everything else is nnU-Net's default trainer, unchanged.
"""

import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

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

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        if os.environ.get("CLOUDKD_NNUNET_INTENSITY_AUG", "0") == "1":
            return transforms
        return without_intensity(transforms)
