"""nnU-Net's planning and preprocessing (2d) and the CPU budgets added to its plans as configurations."""

from __future__ import annotations

import math
import os
import time
from copy import deepcopy
from dataclasses import dataclass, replace
from typing import Dict, Optional

import numpy as np

from ..common.errors import DataError
from ..common.sizes import count_params
from ..data.normalise import BANDS
from .workspace import (BASE_CONFIGURATION, DEFAULT_DATASET_ID, PLANS, Workspace, dump_json, load_json,
                        plans_file)


def plan_and_preprocess(workspace: Workspace, dataset_id: int = DEFAULT_DATASET_ID, processes: int = 1,
                        verbose: bool = False) -> dict:
    """nnU-Net fingerprint + experiment planning (2d) + preprocessing, each step skipped when already done."""
    name = workspace.dataset_name(dataset_id)
    if not (workspace.raw / name / "dataset.json").is_file():
        raise DataError(f"{workspace.raw / name}: not a prepared dataset; run 'cloudkd teacher prepare'")
    timings = {}
    n_da = os.environ.get("nnUNet_n_proc_DA", "1")
    with workspace.active({"nnUNet_n_proc_DA": n_da if int(n_da) > 0 else "1"}):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                           preprocess)

        pf = plans_file(workspace, dataset_id)
        if not pf.is_file():
            t = time.perf_counter()
            extract_fingerprints([dataset_id], num_processes=processes, check_dataset_integrity=False,
                                 clean=True, verbose=verbose)
            timings["fingerprint_s"] = time.perf_counter() - t
            t = time.perf_counter()
            plan_experiments([dataset_id])
            plans = load_json(pf)
            for cfg in plans["configurations"].values():
                if "normalization_schemes" in cfg:  # inputs are normalised by cloudkd already
                    cfg["normalization_schemes"] = ["NoNormalization"] * len(BANDS)
                    cfg["use_mask_for_norm"] = [False] * len(BANDS)
            dump_json(pf, plans)
            timings["plan_s"] = time.perf_counter() - t
        marker = pf.parent / f".cloudkd_preprocessed_{BASE_CONFIGURATION}"
        if not marker.is_file():
            t = time.perf_counter()
            preprocess([dataset_id], PLANS, configurations=(BASE_CONFIGURATION,), num_processes=(processes,),
                       verbose=verbose)
            marker.write_text("done\n")
            timings["preprocess_s"] = time.perf_counter() - t
    return timings

#: parameters of nnU-Net's own 2d plan for 4 x 512 x 512 chips (tests/teacher/test_teacher.py plans it and checks)
NNUNET_2D_PARAMS = 46_325_422

#: normalisation layers a budget configuration may use (nnU-Net's plans name them by import path)
NORMS = {"batch": "torch.nn.BatchNorm2d", "instance": "torch.nn.InstanceNorm2d"}

#: the optimisers of the teacher's trainer, with their default initial rate and weight decay (sgd: nnU-Net's;
#: adamw: the student's)
OPTIMIZERS = {"sgd": (1e-2, 3e-5), "adamw": (3e-3, 1e-4)}
#: the teacher's losses: nnU-Net's Dice + cross-entropy, or its cross-entropy alone
LOSSES = ("dice_ce", "ce")

@dataclass
class Budget:
    """A CPU compute budget for the teacher (the network stays an nnU-Net plan, possibly narrower)."""

    epochs: int = 5
    iters_per_epoch: int = 50
    val_iters: int = 5
    patch: int = 256
    batch: int = 2
    base_features: int = 32  # nnU-Net's default width at the first stage
    max_features: int = 512  # nnU-Net's default cap
    seed: Optional[int] = 0  # seeds the CPU run (None: unseeded, like nnU-Net)
    #: "batch": BatchNorm, whose running statistics keep a chip's absolute brightness at inference (the cue that
    #: tells an overcast chip from a clear one); "instance": nnU-Net's InstanceNorm, which normalises every chip's
    #: feature maps on their own and so erases it
    norm: str = "batch"
    #: the training recipe (``nnUNetTrainerCloudKD``'s knobs; the defaults are nnU-Net's): the optimiser ("sgd":
    #: SGD with Nesterov momentum 0.99 and the poly schedule; "adamw": AdamW with a cosine schedule), its initial
    #: rate (None: 1e-2 for sgd, 3e-3 for adamw), the loss ("dice_ce" or "ce"), deep supervision, a factor on the
    #: probabilities of the spatial rotation and scaling, and the foreground-oversampled share of each batch
    optimizer: str = "sgd"
    lr: Optional[float] = None
    loss: str = "dice_ce"
    deep_supervision: bool = True
    spatial: float = 1.0
    oversample: float = 0.33

    def __post_init__(self):
        for k in ("epochs", "iters_per_epoch", "val_iters", "patch", "batch", "base_features", "max_features"):
            if getattr(self, k) < 1:
                raise ValueError(f"budget {k} must be >= 1, got {getattr(self, k)}")
        if self.norm not in NORMS:
            raise ValueError(f"budget norm must be one of {tuple(NORMS)}, got {self.norm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"budget optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"budget loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"budget lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.spatial) and self.spatial >= 0):
            raise ValueError(f"budget spatial must be a finite factor >= 0, got {self.spatial}")
        if not (math.isfinite(self.oversample) and 0.0 <= self.oversample <= 1.0):
            raise ValueError(f"budget oversample must be a share in [0, 1], got {self.oversample}")

    @property
    def configuration(self) -> str:
        tag = f"2d_p{self.patch}_b{self.batch}"
        if (self.base_features, self.max_features) != (32, 512):
            tag += f"_f{self.base_features}-{self.max_features}"
        if self.norm == "batch":
            tag += "_bn"
        # the training recipe where it is not nnU-Net's, so that each recipe trains into its own model folder (a
        # trained fold is reused only by the recipe that trained it)
        if self.optimizer != "sgd":
            tag += f"_{self.optimizer}"
        if self.lr is not None:
            tag += f"_lr{self.lr:g}"
        if self.loss != "dice_ce":
            tag += f"_{self.loss}"
        if not self.deep_supervision:
            tag += "_nods"
        if self.spatial != 1.0:
            tag += f"_sp{self.spatial:g}"
        if self.oversample != 0.33:
            tag += f"_os{self.oversample:g}"
        return tag

    def env(self) -> Dict[str, str]:
        return {"CLOUDKD_NNUNET_EPOCHS": str(self.epochs), "CLOUDKD_NNUNET_ITERS": str(self.iters_per_epoch),
                "CLOUDKD_NNUNET_VAL_ITERS": str(self.val_iters),
                "CLOUDKD_NNUNET_SEED": "" if self.seed is None else str(self.seed),
                "CLOUDKD_NNUNET_OPTIMIZER": self.optimizer, "CLOUDKD_NNUNET_LR": "" if self.lr is None else repr(self.lr),
                "CLOUDKD_NNUNET_LOSS": self.loss, "CLOUDKD_NNUNET_DEEP_SUPERVISION": str(int(self.deep_supervision)),
                "CLOUDKD_NNUNET_SPATIAL": repr(float(self.spatial)), "CLOUDKD_NNUNET_OVERSAMPLE": repr(float(self.oversample))}


#: named teacher recipes, ``cloudkd teacher train --recipe NAME`` (options given with it override its fields).
#: "demo": ``make demo``'s teacher, a narrow nnU-Net within about 5 minutes of 2 CPU cores
#: (``cloudkd.demo.DemoConfig`` uses it), trained with AdamW + cosine and no foreground oversampling (patches drawn
#: uniformly) for 16 x 50 iterations. At 8 x 50 iterations nnU-Net's SGD (momentum 0.99, poly from 0.01) scored
#: 0.750 on the demo's test split, AdamW 0.790 +- 0.028 and AdamW without oversampling 0.841 +- 0.012 (3 seeds
#: each), the two largest changes of the teacher ablation (``benchmarks/teacher_ablation.py``,
#: ``benchmarks/results/teacher_ablation.md``); on the darker ground of 2026-12-04 that recipe scored
#: 0.818 +- 0.019 at 8 epochs and 0.830 +- 0.010 at 16 (``teacher_ablation_darkground.md``), so the demo trains 16.
#: "long": the same recipe for 128 epochs (8x, about 36 minutes of 2 CPU cores), the study's long run: at 0.5 it
#: is often tight (0.813 +- 0.028 on the demo's test split, 3 seeds, two at precision 0.98); with the threshold
#: fitted on its fold's validation chips (``cloudkd teacher fit-threshold``: 0.30, 0.35, 0.35) 0.844 +- 0.010, the best
#: teacher measured (``teacher_ablation_darkground.md``, row ``adamw_oversample0_e128_valthr``); fit the threshold
#: after training it.
TEACHER_RECIPES: Dict[str, Budget] = {
    "demo": Budget(epochs=16, iters_per_epoch=50, val_iters=2, patch=256, batch=4, base_features=8, max_features=128,
                   optimizer="adamw", oversample=0.0),
}
TEACHER_RECIPES["long"] = replace(TEACHER_RECIPES["demo"], epochs=128)


def recipe(name: str) -> Budget:
    """A copy of the named recipe (ValueError naming the recipes for an unknown name)."""
    if name not in TEACHER_RECIPES:
        raise ValueError(f"unknown teacher recipe {name!r}; recipes: {', '.join(TEACHER_RECIPES)}")
    return replace(TEACHER_RECIPES[name])


def add_budget_configuration(workspace: Workspace, dataset_id: int, budget: Budget) -> str:
    """Add (or refresh) ``budget.configuration`` in the plans: inherits ``2d``, with the budget's patch, batch,
    width and normalisation layer. Stages are dropped so the bottleneck stays >= 4 pixels; the patch must divide by the total stride."""
    pf = plans_file(workspace, dataset_id)
    plans = load_json(pf)
    base = plans["configurations"][BASE_CONFIGURATION]
    arch = deepcopy(base["architecture"])
    kw = arch["arch_kwargs"]
    n = min(int(kw["n_stages"]), 1 + int(math.floor(math.log2(max(budget.patch, 4) / 4))))
    stride = int(np.prod([s[0] for s in kw["strides"][:n]]))
    if budget.patch % stride:
        raise DataError(f"budget patch {budget.patch} is not divisible by the network's total stride {stride}; "
                        f"use a multiple of {stride}")
    kw["n_stages"] = n
    kw["features_per_stage"] = [min(budget.base_features * 2 ** i, budget.max_features) for i in range(n)]
    for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
        kw[key] = kw[key][:n]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: n - 1]
    kw["norm_op"] = NORMS[budget.norm]
    kw["norm_op_kwargs"] = {"eps": 1e-5, "affine": True}
    plans["configurations"][budget.configuration] = {
        "inherits_from": BASE_CONFIGURATION,
        "patch_size": [budget.patch, budget.patch],
        "batch_size": budget.batch,
        "architecture": arch,
    }
    dump_json(pf, plans)
    return budget.configuration

def build_network(plans: dict, configuration: str, num_input_channels: int = len(BANDS), num_outputs: int = 2,
                  deep_supervision: bool = False):
    """The nnU-Net network of a plans configuration (as nnU-Net builds it for inference)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, num_input_channels, num_outputs,
                                  allow_init=True, deep_supervision=deep_supervision), cm

def describe_plan(plans: dict, configuration: str = BASE_CONFIGURATION) -> dict:
    """Parameters and plan of a configuration: stages, features per stage, patch and batch size."""
    net, cm = build_network(plans, configuration)
    kw = cm.network_arch_init_kwargs
    return {
        "configuration": configuration,
        "network": cm.network_arch_class_name.rsplit(".", 1)[-1],
        "params": count_params(net),
        "n_stages": int(kw["n_stages"]),
        "features_per_stage": [int(f) for f in kw["features_per_stage"]],
        "strides": [list(map(int, s)) for s in kw["strides"]],
        "patch_size": [int(p) for p in cm.patch_size],
        "batch_size": int(cm.batch_size),
        "normalization_schemes": list(cm.normalization_schemes),
    }
