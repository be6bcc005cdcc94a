"""nnU-Net trainer with a user-stated compute budget, found by nnU-Net through ``nnUNet_extTrainer``.

``cloudkd teacher train`` sets these environment variables before nnU-Net builds the trainer:

* ``CLOUDKD_NNUNET_EPOCHS`` (default 1000, nnU-Net's), ``CLOUDKD_NNUNET_ITERS`` (iterations per epoch, default
  250), ``CLOUDKD_NNUNET_VAL_ITERS`` (validation iterations per epoch, default 50);
* ``CLOUDKD_NNUNET_SAVE_EVERY`` (checkpoint period in epochs, default 1, so an interrupted CPU run resumes
  from the last epoch);
* ``CLOUDKD_NNUNET_SEED`` (optional): seeds Python, numpy and torch, which makes a CPU run with in-process data
  augmentation (``nnUNet_n_proc_DA=0``) reproducible. nnU-Net itself does not seed.

Patch size, batch size and network width come from the plans configuration (``cloudkd teacher train`` adds a
budget configuration to nnU-Net's plans); everything else is nnU-Net's default trainer, unchanged.
"""

import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


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
