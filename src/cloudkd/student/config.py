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
#: the training precisions of a student run, by Lightning's names: 32-true (float32, the default, as on a CPU),
#: bf16-mixed (bfloat16 autocast on float32 weights: the choice on a GPU; Lightning runs it on a CPU too), 16-mixed
#: (float16 autocast with loss scaling; on a CPU Lightning runs bf16-mixed instead) and 64-true. Not Lightning's
#: 16-true and bf16-true, which cast the input chips too (validation reads their nodata from them) and train float16
#: without loss scaling, nor transformer-engine (FP8 for linear layers, which the students do not have)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
#: the precisions as the command line offers them (Lightning's aliases in brackets)
PRECISION_CHOICES = "32-true (or 32; the default), bf16-mixed (or bf16; recommended on a GPU), 16-mixed (or 16) or " \
                    "64-true (or 64)"


def lightning_precision(value) -> str:
    """Lightning's name of the training precision ``value`` (its aliases too: 32 or "32" -> "32-true", "bf16" ->
    "bf16-mixed"); ValueError for a value Lightning does not accept and for one not in :data:`PRECISIONS`."""
    import warnings

    from lightning_fabric.connector import _convert_precision_to_unified_args

    try:
        with warnings.catch_warnings():  # Lightning's advice to spell "16" as "16-mixed": the name returned is it
            warnings.simplefilter("ignore")
            name = _convert_precision_to_unified_args(value)
    except ValueError:
        name = None
    if name not in PRECISIONS:
        raise ValueError(f"{value!r} is not a training precision of the students: use {PRECISION_CHOICES}")
    return name


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
    #: distil the nnU-Net teacher's decision, not its raw scale: its logits minus the logit of the threshold
    #: ``teacher fit-threshold`` recorded for its folds (student.teachers.RuleCentredTeacher)
    teacher_rule: bool = False
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
    precision: str = "32-true"  # Lightning's training precision (PRECISIONS; an alias given becomes its name)
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0
    limit_train_batches: Optional[int] = None  # fixed steps per epoch (equal budgets across runs)
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        self.precision = lightning_precision(self.precision)

    @property
    def teacher_mode(self) -> str:
        online = bool(self.teacher_nnunet or self.teacher_onnx)
        if online and self.soft_dir:
            raise ValueError("give either offline soft labels or an online teacher, not both")
        return "online" if online else "offline" if self.soft_dir else "none"
