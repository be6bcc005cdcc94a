"""The one source of every student-training default: :class:`TrainConfig`. ``cloudkd train`` / ``distill``, the
Lightning module, the losses, the demo and the notebooks all read their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..common.infer import DEFAULT_THRESHOLD

#: the default KD loss of ``cloudkd distill`` / TrainConfig: per pixel, which is well posed with or without labels
#: (CWD is invariant to a constant shift of the logits, so distilled without labels it cannot place the 0
#: threshold). With labels, ``make demo`` uses CWD: over 3 seeds with a teacher weaker than its students it kept
#: the labels-only quality where pixel KD pulled the student down (benchmarks/results/distill_seeds.md).
DEFAULT_KD = "pixel"
#: the KD loss of ``make demo``'s student (labels + online KD)
DEMO_KD = "cwd"
#: the KD weight of ``cloudkd distill`` and of ``make demo``'s student (``cloudkd train`` defaults to 0: no KD)
DISTILL_KD_WEIGHT = 1.0
#: the content kind of a run folder (train/distill) in the output policy (:mod:`cloudkd.common.outputs`)
RUN_KIND = "student-run"


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "unet-s"
    folds: Optional[str] = None
    val_fold: int = 0
    exclude: Optional[str] = None  # file of chip ids left out of training and validation (cloudkd.data.exclude)
    epochs: int = 10
    batch_size: int = 8
    crop: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_weight: float = 1.0
    kd_weight: float = 0.0
    kd: str = DEFAULT_KD
    temperature: float = 2.0
    soft_dir: Optional[str] = None  # offline teacher: soft labels of the training (and unlabelled) chips
    teacher_nnunet: Optional[str] = None  # online teacher: an nnU-Net workdir
    teacher_onnx: Optional[str] = None  # online teacher: an ONNX model
    teacher_onnx_output: str = "logits"
    #: the nnU-Net teacher's folds to ensemble (None: the student's ``val_fold``, the only fold that has not seen
    #: its validation labels; another needs ``allow_teacher_leak``, see student.teachers.nnunet_teacher_folds)
    teacher_folds: Optional[List[int]] = None
    allow_teacher_leak: bool = False
    unlabelled: Optional[str] = None  # extra chips without labels: KD loss only (the labels' loss on the labelled chips)
    cloud_paste: float = 0.0  # probability of pasting a batch-mate's labelled cloud onto a low-cover chip
    boundary_ignore: int = 0  # px around label outlines left out of the hard loss
    kd_on: str = "all"  # the chips the KD loss covers: all, or unlabelled (the --unlabelled chips only)
    #: gain randomisation (issue 30): the share of training chips darkened by a gain drawn log-uniformly from
    #: [gain_min, 1] (0 = off; cloudkd.data.augment.reflectance_gain)
    gain: float = 0.0
    #: the darkest gain: the median clear ground of real L2A chips beyond Chifunfu (0.064, 25 chips) over that of
    #: the generated training chips (0.157), benchmarks/results/cloud_brightness_chips.csv
    gain_min: float = 0.4
    seed: int = 0
    #: the prediction rule's cloud probability threshold: validation scores at it and ``pack`` ships it
    threshold: float = DEFAULT_THRESHOLD
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0
    limit_train_batches: Optional[int] = None  # fixed steps per epoch (equal budgets across runs)
    resume: bool = False
    progress: bool = True

    @property
    def teacher_mode(self) -> str:
        online = bool(self.teacher_nnunet or self.teacher_onnx)
        if online and self.soft_dir:
            raise ValueError("give either offline soft labels or an online teacher, not both")
        return "online" if online else "offline" if self.soft_dir else "none"
