"""LightningModule training a student (or any smp model) from labels and/or a teacher.

Teacher modes:

* ``none``: labels only;
* ``offline``: the batch carries ``soft`` (teacher probabilities written by ``teacher predict``), augmented with
  the image, turned into teacher logits;
* ``online``: a teacher object (``logits(x)``) runs on exactly the augmented batch the student sees. It is
  either attached built (:meth:`StudentModule.attach_teacher`) or built when fitting starts by a factory
  (:meth:`StudentModule.teacher_from`) on the module's own device, which under DDP is each process's
  ``cuda:LOCAL_RANK``. Either way it is no submodule and never saved in checkpoints.

Training levers for labels drawn loosely (both off by default): ``cloud_paste`` (probability of pasting a
cloudy chip's labelled cloud onto each low-cover chip of a batch, :func:`cloudkd.data.augment.cloud_paste`) and
``boundary_ignore`` (px on both sides of label outlines left out of the hard loss).

Validation computes the leaderboard metric (global Jaccard over all pixels of the validation fold, with
:mod:`cloudkd.common.metrics`) of the masks the one prediction rule makes (:mod:`cloudkd.common.infer`: cloud
above the run's ``threshold``, nodata pixels clear), summed over devices before the ratio, and logs it as
``val_jaccard``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import pytorch_lightning as pl
import torch

from ..data.augment import cloud_paste, reflectance_gain
from ..data.dataset import image_nodata
from ..common.infer import masks_from_logits
from ..common.metrics import Confusion, confusion, rates
from .config import TrainConfig as C
from .distill import LossConfig, bce_dice, cap_logits, prob_to_logit
from .models import build_model


class StudentModule(pl.LightningModule):
    def __init__(self, model: str = C.model, *, label_weight: float = C.label_weight,
                 kd_weight: float = C.kd_weight, kd: str = C.kd, temperature: float = C.temperature,
                 teacher_mode: str = "none", lr: float = C.lr, weight_decay: float = C.weight_decay,
                 max_epochs: int = C.epochs, cloud_paste: float = C.cloud_paste,
                 boundary_ignore: int = C.boundary_ignore, seed: int = C.seed, threshold: float = C.threshold,
                 kd_on: str = C.kd_on, gain: float = C.gain, gain_min: float = C.gain_min):
        super().__init__()
        if teacher_mode not in ("none", "offline", "online"):
            raise ValueError(f"teacher_mode must be none, offline or online, got {teacher_mode!r}")
        if teacher_mode == "none" and kd_weight > 0:
            raise ValueError("kd_weight > 0 needs a teacher (offline soft labels or an online teacher)")
        self.save_hyperparameters()
        self.model = build_model(model)
        if not 0.0 <= cloud_paste <= 1.0:
            raise ValueError(f"cloud_paste must be a probability in [0, 1], got {cloud_paste}")
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be a probability in [0, 1], got {gain}")
        if not 0.0 < gain_min <= 1.0:
            raise ValueError(f"gain_min must be in (0, 1], got {gain_min}")
        self.loss = LossConfig(label_weight, kd_weight, kd, temperature, boundary_ignore, kd_on)
        self._paste_gen = None
        self._gain_gen = None
        self.teacher = None  # set with attach_teacher(); not a submodule, never saved in checkpoints
        self._teacher_factory = None  # set with teacher_from(); builds the teacher in on_fit_start
        self._val = Confusion()

    def attach_teacher(self, teacher) -> None:
        """Use ``teacher`` (already built, on whatever device it was built) as the online teacher."""
        object.__setattr__(self, "teacher", teacher)

    def teacher_from(self, factory: Callable[[torch.device], object]) -> None:
        """Build the online teacher with ``factory(device)`` when fitting starts (:meth:`on_fit_start`), on this
        module's device once the trainer has placed it: each DDP process its own GPU, not GPU 0 for all."""
        self._teacher_factory = factory

    def on_fit_start(self) -> None:
        if self.teacher is None and self._teacher_factory is not None:
            self.attach_teacher(self._teacher_factory(self.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _teacher_logits(self, batch) -> Optional[torch.Tensor]:
        mode = self.hparams.teacher_mode
        if mode == "offline":
            return prob_to_logit(batch["soft"])
        if mode == "online":
            if self.teacher is None:
                raise RuntimeError("online distillation needs attach_teacher(teacher) before fitting")
            with torch.no_grad():  # capped like offline soft labels, so both modes teach the same targets
                return cap_logits(self.teacher.logits(batch["image"]).to(batch["image"].device))
        return None

    def training_step(self, batch, batch_idx):
        if self.hparams.cloud_paste > 0:  # before the teacher, so an online teacher sees the pasted batch too
            if self._paste_gen is None:
                self._paste_gen = torch.Generator().manual_seed(1000 * self.hparams.seed + self.global_rank)
            cloud_paste(batch, self.hparams.cloud_paste, self._paste_gen)
        if self.hparams.gain > 0:  # likewise: the teacher sees the darkened chips the student sees
            if self._gain_gen is None:
                self._gain_gen = torch.Generator().manual_seed(1000 * self.hparams.seed + 7 + self.global_rank)
            reflectance_gain(batch, self.hparams.gain, self.hparams.gain_min, self._gain_gen)
        logits = self(batch["image"])
        parts = self.loss(logits, batch.get("mask"), self._teacher_logits(batch) if self.loss.kd_weight else None,
                          batch.get("labelled"))
        for k, v in parts.items():
            self.log(f"train_{k}", v, prog_bar=k == "loss", on_step=False, on_epoch=True,
                     batch_size=logits.shape[0])
        return parts["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val = Confusion()

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])
        # the one prediction rule, as pack ships it: the run's threshold, nodata pixels clear (validation images
        # are whole chips, not augmented, so their nodata pixels are exactly those of the reflectance)
        pred = masks_from_logits(logits, self.hparams.threshold, image_nodata(batch["image"]))
        self._val += confusion(pred, batch["mask"][:, 0].detach().cpu().numpy() > 0.5)
        # the hard-label loss on whole validation chips (comparable across runs whatever their KD settings)
        self.log("val_loss", bce_dice(logits, batch["mask"]), on_epoch=True, batch_size=logits.shape[0],
                 sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        c = self._val
        t = torch.tensor([c.tp, c.fp, c.fn, c.tn], dtype=torch.float64, device=self.device)
        t = self.trainer.strategy.reduce(t, reduce_op="sum")  # global counts over all devices
        total = Confusion(*[int(v) for v in t.tolist()])
        r = rates(total)  # NaN where undefined; logged as 0 so that checkpointing can compare epochs
        for name in ("jaccard", "precision", "recall"):
            self.log(f"val_{name}", 0.0 if math.isnan(r[name]) else r[name], prog_bar=name == "jaccard",
                     sync_dist=False)

    def lr_factor(self, epoch: int) -> float:
        """The cosine schedule: ``lr * lr_factor(epoch)``, from 1 at epoch 0 to 0 at ``max_epochs``."""
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.hparams.max_epochs) / max(1, self.hparams.max_epochs)))

    def configure_optimizers(self):
        # AdamW on the cosine schedule, a LambdaLR that Lightning steps after each epoch (its rate is logged by the
        # LearningRateMonitor of cloudkd.student.train, under the name "lr")
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        cosine = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: self.lr_factor(epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "epoch", "name": "lr"}}

    def on_train_start(self) -> None:
        # the schedule at the epoch training starts from: a run resumed with more epochs follows the longer schedule
        # (its checkpoint holds the rate of the shorter one, which may have reached 0; one written before the
        # schedule was a LambdaLR holds no scheduler state at all); a new run is at epoch 0 already
        cosine = self.lr_schedulers()
        cosine.last_epoch = self.current_epoch
        for group, base in zip(cosine.optimizer.param_groups, cosine.base_lrs):
            group["lr"] = base * self.lr_factor(self.current_epoch)
