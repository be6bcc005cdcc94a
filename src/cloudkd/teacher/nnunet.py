"""Drive nnU-Net v2 (unforked) for the cloud teacher: convert, plan and preprocess, train, describe.

Everything lives in one workspace folder (default ``runs/nnunet``)::

    WORKDIR/nnUNet_raw/Dataset501_OnCloudN/{imagesTr,labelsTr,dataset.json}
    WORKDIR/nnUNet_preprocessed/Dataset501_OnCloudN/{nnUNetPlans.json,splits_final.json,...}
    WORKDIR/nnUNet_results/Dataset501_OnCloudN/{trainer}__nnUNetPlans__{configuration}/fold_K/
    WORKDIR/teacher.json      which trained model ``teacher predict`` and the in-process teacher use

**Inputs.** The raw dataset holds the project's own normalised inputs (``normalise(read_chip(...))``, float32,
one compressed TIFF per band) and the plans are switched to nnU-Net's ``NoNormalization`` before
preprocessing. nnU-Net's default for these channel names would be a per-image z-score, which throws away the
absolute brightness that separates an overcast chip from a clear one; this way the teacher, the student and
``submission/main.py`` see exactly the same inputs.

**Folds.** ``splits_final.json`` is written from the project's location-grouped folds, so no location is in the
training and validation part of a teacher fold.

**Trainer.** Every run uses the project's ``nnUNetTrainerCloudKD`` (found through ``nnUNet_extTrainer``):
nnU-Net's trainer without the brightness, contrast and gamma augmentation that would destroy the
absolute-reflectance cue (``CLOUDKD_NNUNET_INTENSITY_AUG=1`` restores it), with an optional seed.
``stock=True`` (``--nnunet-defaults``) runs nnU-Net's own ``nnUNetTrainer`` unchanged instead.

**Budgets.** On a GPU nnU-Net's ``2d`` configuration and schedule are used (1000 epochs x 250 iterations) unless
a budget is asked for; ``--seed`` alone does not ask for one. On a CPU the user states a :class:`Budget`;
cloudkd adds a configuration to nnU-Net's plans (inheriting from ``2d``: patch and batch size, normalisation
layer, and optionally a narrower network) and the trainer reads the epochs and iterations per epoch. The
settings of a run are written to ``WORKDIR/training.json`` when it starts, so ``--continue`` resumes that run
without repeating them (options given with it override, e.g. ``--epochs`` to extend it).

**Data-augmentation workers.** ``nnUNet_n_proc_DA`` is the user's value when set; otherwise 0 on a CPU
(augmentation in the training process: seeded, and no worker processes competing for the cores) and nnU-Net's
own default on a GPU (worker processes keep the GPU fed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import tifffile

from ..data.chips import BANDS, DataError, atomic_write, load_index, read_chip, read_label, resolve_split, \
    validate_split
from ..data.folds import make_folds
from ..data.normalise import MEAN, REFL_MAX, STD, normalise

DEFAULT_DATASET_ID = 501
DEFAULT_NAME = "OnCloudN"
PLANS = "nnUNetPlans"
BASE_CONFIGURATION = "2d"
DEFAULT_TRAINER = "nnUNetTrainer"
BUDGET_TRAINER = "nnUNetTrainerCloudKD"
#: nnU-Net's default training and validation iterations per epoch
NNUNET_ITERS = (250, 50)
TRAINER_DIR = Path(__file__).resolve().parent / "trainers"
FILE_ENDING = ".tif"


# ----------------------------------------------------------------------------------------------------------------
# Workspace and environment
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def teacher_json(self) -> Path:
        return self.root / "teacher.json"

    def env(self) -> Dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results), "nnUNet_extTrainer": str(TRAINER_DIR)}

    @contextlib.contextmanager
    def active(self, extra: Optional[Dict[str, str]] = None) -> Iterator["Workspace"]:
        """Set nnU-Net's environment variables (and ``extra``) for the duration of the block, then restore."""
        new = {**self.env(), **(extra or {})}
        old = {k: os.environ.get(k) for k in new}
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        os.environ.update(new)
        try:
            yield self
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def dataset_folders(self, dataset_id: int) -> List[Path]:
        """Existing ``Dataset{id}_*`` folders in the raw or preprocessed tree."""
        pat = f"Dataset{dataset_id:03d}_*"
        found = {p.name: p for base in (self.raw, self.preprocessed) if base.is_dir() for p in base.glob(pat)
                 if p.is_dir()}
        return [found[k] for k in sorted(found)]

    def dataset_name(self, dataset_id: int) -> str:
        folders = self.dataset_folders(dataset_id)
        if not folders:
            raise DataError(f"{self.raw}: no nnU-Net dataset with id {dataset_id}; run 'cloudkd teacher prepare'")
        return folders[0].name


def dataset_name(dataset_id: int, name: str = DEFAULT_NAME) -> str:
    if not 1 <= dataset_id <= 999:
        raise DataError(f"nnU-Net dataset ids have three digits (1-999), got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def _load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _dump_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda t: Path(t).write_text(json.dumps(obj, indent=2)))


# ----------------------------------------------------------------------------------------------------------------
# prepare: On Cloud N layout -> nnU-Net raw dataset + splits_final.json
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    dataset_name: str
    n_chips: int
    shape: tuple
    reused: bool
    seconds: float
    raw_dir: Path
    splits_file: Path


def _fingerprint(source: Path, index: pd.DataFrame, folds: pd.DataFrame, shape) -> dict:
    ids = sorted(index.chip_id)
    fold_of = folds.set_index("chip_id")["fold"]
    h = hashlib.sha256()
    for c in ids:
        h.update(f"{c}:{int(fold_of[c])};".encode())
    return {"source": str(source), "n_chips": len(ids), "shape": list(shape), "bands": list(BANDS),
            "chips_and_folds_sha256": h.hexdigest(),
            "normalise": {"mean": list(MEAN), "std": list(STD), "refl_max": REFL_MAX}}


def _write_case(args) -> None:
    raw_dir, chip_id, features, label, shape = args
    x = normalise(read_chip(features, shape))
    for c in range(x.shape[0]):
        tifffile.imwrite(raw_dir / "imagesTr" / f"{chip_id}_{c:04d}{FILE_ENDING}", x[c], compression="zlib",
                         predictor=True, metadata=None)
    tifffile.imwrite(raw_dir / "labelsTr" / f"{chip_id}{FILE_ENDING}", read_label(label, shape), metadata=None)


def prepare(data: os.PathLike | str, workspace: Workspace, dataset_id: int = DEFAULT_DATASET_ID,
            name: str = DEFAULT_NAME, folds: Optional[pd.DataFrame] = None, k: int = 5, seed: int = 0,
            workers: int = 2, progress: bool = True) -> PrepareResult:
    """Convert a labelled On Cloud N-layout split into an nnU-Net raw dataset and write its splits.

    Every chip and label is validated first (missing labels, mixed chip sizes, missing/extra-dimensional bands
    fail here, before any nnU-Net code runs). Idempotent: the same data and folds reuse the existing dataset;
    a different dataset under the same id is refused.
    """
    t0 = time.perf_counter()
    split = resolve_split(data, "train")
    if not split.labels_dir.is_dir():
        raise DataError(f"teacher prepare: {split.labels_dir}: labels folder does not exist; the teacher needs "
                        f"labelled chips (nothing was written)")
    report = validate_split(split, labels=True, progress=progress)
    if not report.ok:
        head = "\n  ".join(report.errors[:20])
        more = f"\n  ... and {len(report.errors) - 20} more" if len(report.errors) > 20 else ""
        raise DataError(f"teacher prepare: {split.root} has {len(report.errors)} problem(s); nothing was "
                        f"written:\n  {head}{more}")
    index = load_index(split, require_labels=True)
    if folds is None:
        folds = make_folds(index, k=k, seed=seed)
    else:
        missing = sorted(set(index.chip_id) - set(folds.chip_id))
        if missing:
            raise DataError(f"teacher prepare: {len(missing)} chip(s) have no fold: {missing[:10]}")
        folds = folds[folds.chip_id.isin(set(index.chip_id))]
    ds_name = dataset_name(dataset_id, name)
    fp = _fingerprint(split.root.resolve(), index, folds, report.shape)
    raw_dir = workspace.raw / ds_name
    splits_file = workspace.preprocessed / ds_name / "splits_final.json"

    for existing in workspace.dataset_folders(dataset_id):
        if existing.name != ds_name:
            raise DataError(f"teacher prepare: dataset id {dataset_id} is already used by {existing}; "
                            f"choose another --dataset-id")
    if raw_dir.exists():
        djson = raw_dir / "dataset.json"
        have = _load_json(djson).get("cloudkd") if djson.is_file() else None
        if have != fp:
            what = f"{have.get('n_chips')} chips from {have.get('source')}" if isinstance(have, dict) else "unknown"
            raise DataError(f"teacher prepare: {raw_dir} already holds a different dataset ({what}); use another "
                            f"--dataset-id or delete that folder")
        if splits_file.is_file():
            return PrepareResult(ds_name, len(index), report.shape, True, time.perf_counter() - t0, raw_dir,
                                 splits_file)

    else:
        tmp = workspace.raw / f".{ds_name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir(parents=True)
        jobs = [(tmp, r.chip_id, r.features, r.label, report.shape) for r in index.itertuples()]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            it = pool.map(_write_case, jobs)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(jobs), desc="teacher prepare", unit="chip")
            for _ in it:
                pass
        dataset_json = {
            "channel_names": {str(i): b for i, b in enumerate(BANDS)},
            "labels": {"background": 0, "cloud": 1},
            "numTraining": len(index),
            "file_ending": FILE_ENDING,
            "name": ds_name,
            "description": "Cloud segmentation (On Cloud N layout). Images are cloudkd.data.normalise(read_chip()) "
                           "float32; plans use NoNormalization.",
            "cloudkd": fp,
        }
        _dump_json(tmp / "dataset.json", dataset_json)
        os.replace(tmp, raw_dir)

    # nnU-Net fold i = our fold i; validation = the chips of that fold (whole locations)
    splits = []
    for f in sorted(folds.fold.unique()):
        splits.append({"train": sorted(folds.chip_id[folds.fold != f]), "val": sorted(folds.chip_id[folds.fold == f])})
    splits_file.parent.mkdir(parents=True, exist_ok=True)
    _dump_json(splits_file, splits)
    atomic_write(workspace.root / f"{ds_name}_folds.csv", lambda t: folds.to_csv(t, index=False))
    return PrepareResult(ds_name, len(index), report.shape, False, time.perf_counter() - t0, raw_dir, splits_file)


# ----------------------------------------------------------------------------------------------------------------
# plan and preprocess
# ----------------------------------------------------------------------------------------------------------------
def plans_file(workspace: Workspace, dataset_id: int) -> Path:
    return workspace.preprocessed / workspace.dataset_name(dataset_id) / f"{PLANS}.json"


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
            plans = _load_json(pf)
            for cfg in plans["configurations"].values():
                if "normalization_schemes" in cfg:  # inputs are normalised by cloudkd already
                    cfg["normalization_schemes"] = ["NoNormalization"] * len(BANDS)
                    cfg["use_mask_for_norm"] = [False] * len(BANDS)
            _dump_json(pf, plans)
            timings["plan_s"] = time.perf_counter() - t
        marker = pf.parent / f".cloudkd_preprocessed_{BASE_CONFIGURATION}"
        if not marker.is_file():
            t = time.perf_counter()
            preprocess([dataset_id], PLANS, configurations=(BASE_CONFIGURATION,), num_processes=(processes,),
                       verbose=verbose)
            marker.write_text("done\n")
            timings["preprocess_s"] = time.perf_counter() - t
    return timings


# ----------------------------------------------------------------------------------------------------------------
# budgets and plans configurations
# ----------------------------------------------------------------------------------------------------------------
#: normalisation layers a budget configuration may use (nnU-Net's plans name them by import path)
NORMS = {"batch": "torch.nn.BatchNorm2d", "instance": "torch.nn.InstanceNorm2d"}


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

    def __post_init__(self):
        for k in ("epochs", "iters_per_epoch", "val_iters", "patch", "batch", "base_features", "max_features"):
            if getattr(self, k) < 1:
                raise ValueError(f"budget {k} must be >= 1, got {getattr(self, k)}")
        if self.norm not in NORMS:
            raise ValueError(f"budget norm must be one of {tuple(NORMS)}, got {self.norm!r}")

    @property
    def configuration(self) -> str:
        tag = f"2d_p{self.patch}_b{self.batch}"
        if (self.base_features, self.max_features) != (32, 512):
            tag += f"_f{self.base_features}-{self.max_features}"
        if self.norm == "batch":
            tag += "_bn"
        return tag

    def env(self) -> Dict[str, str]:
        return {"CLOUDKD_NNUNET_EPOCHS": str(self.epochs), "CLOUDKD_NNUNET_ITERS": str(self.iters_per_epoch),
                "CLOUDKD_NNUNET_VAL_ITERS": str(self.val_iters),
                "CLOUDKD_NNUNET_SEED": "" if self.seed is None else str(self.seed)}


def add_budget_configuration(workspace: Workspace, dataset_id: int, budget: Budget) -> str:
    """Add (or refresh) ``budget.configuration`` in the plans: inherits ``2d``, with the budget's patch, batch,
    width and normalisation layer. Stages are dropped so the bottleneck stays >= 4 pixels; the patch must divide by the total stride."""
    pf = plans_file(workspace, dataset_id)
    plans = _load_json(pf)
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
    _dump_json(pf, plans)
    return budget.configuration


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------
def model_folder(workspace: Workspace, dataset_id: int, configuration: str, trainer: str) -> Path:
    return workspace.results / workspace.dataset_name(dataset_id) / f"{trainer}__{PLANS}__{configuration}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def augmentation_workers_env(device: str) -> Dict[str, str]:
    """``nnUNet_n_proc_DA`` for training on ``device``: the user's value when set, else 0 on a CPU and unset
    (nnU-Net's default, worker processes) on a GPU."""
    user = os.environ.get("nnUNet_n_proc_DA")
    if user not in (None, ""):
        return {"nnUNet_n_proc_DA": user}
    return {} if str(device).startswith("cuda") else {"nnUNet_n_proc_DA": "0"}


#: budget fields that shape the run (a GPU uses nnU-Net's schedule and plan unless one of them is given)
SHAPE_FIELDS = ("epochs", "iters_per_epoch", "val_iters", "patch", "batch", "base_features", "max_features", "norm")


def training_record(workspace: Workspace) -> Optional[dict]:
    """The settings of the last training started in ``workspace`` (``WORKDIR/training.json``), or None."""
    path = workspace.root / "training.json"
    return _load_json(path) if path.is_file() else None


@dataclass
class RunSettings:
    """What one ``teacher train`` call trains: a budget (None: nnU-Net's 2d plan and schedule), the seed of a
    budget-less run, and whether nnU-Net's own trainer runs unchanged (``stock``)."""

    budget: Optional[Budget]
    seed: Optional[int] = None
    stock: bool = False


def resolve_budget(workspace: Workspace, device: str, stock: bool = False, continue_training: bool = False,
                   **given) -> RunSettings:
    """The run a ``teacher train`` call asks for.

    ``given`` are the budget options the user stated (None = not stated). ``continue_training`` takes the settings
    of the run recorded in ``training.json``, the stated options overriding them; on a GPU a budget is used only
    when a shaping option is stated (a seed alone keeps nnU-Net's schedule); ``stock`` is nnU-Net's own trainer.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if stock and given:
        raise ValueError("--nnunet-defaults runs nnU-Net's own trainer unchanged and takes no budget options "
                         f"(given: {', '.join(sorted(given))})")
    if continue_training:
        rec = training_record(workspace)
        if rec is None:
            raise DataError(f"{workspace.root}: no training was started in this workdir, nothing to --continue")
        if rec.get("budget") is None:
            if set(given) - {"seed"} or (rec.get("stock") and given):
                raise ValueError("the run to continue uses nnU-Net's plan and schedule; budget options do not "
                                 "apply to it")
            return RunSettings(None, given.get("seed", rec.get("seed")), bool(rec.get("stock")))
        return RunSettings(Budget(**{**rec["budget"], **given}))
    if stock:
        return RunSettings(None, None, True)
    if str(device).startswith("cuda") and not set(given) & set(SHAPE_FIELDS):
        return RunSettings(None, given.get("seed"))
    return RunSettings(Budget(**given))


@dataclass
class TrainResult:
    model_folder: Path
    fold: int
    configuration: str
    trainer: str
    epochs_done: int
    seconds: float
    seconds_per_iteration: Optional[float]
    reused: bool


def train(workspace: Workspace, dataset_id: int = DEFAULT_DATASET_ID, fold: int = 0,
          budget: Optional[Budget] = None, device: Optional[str] = None, continue_training: bool = False,
          force: bool = False, validate: bool = False, processes: int = 1, seed: Optional[int] = None,
          stock: bool = False) -> TrainResult:
    """Plan/preprocess if needed, then train one fold.

    ``budget=None`` uses nnU-Net's ``2d`` configuration and schedule (1000 epochs x 250 iterations, for a GPU)
    with the project's trainer, seeded with ``seed`` when given; ``stock`` uses nnU-Net's own ``nnUNetTrainer``.
    A finished fold is reused unless ``force``; ``continue_training`` resumes from nnU-Net's latest checkpoint
    (or extends a finished run to a larger epoch budget). ``validate`` runs nnU-Net's full validation of the
    fold at the end (slow on a CPU).
    """
    import torch

    if stock and (budget is not None or seed is not None):
        raise ValueError("nnU-Net's own trainer (stock) takes neither a budget nor a seed")
    plan_and_preprocess(workspace, dataset_id, processes=processes)
    configuration = add_budget_configuration(workspace, dataset_id, budget) if budget else BASE_CONFIGURATION
    trainer_name = DEFAULT_TRAINER if stock else BUDGET_TRAINER
    folder = model_folder(workspace, dataset_id, configuration, trainer_name)
    fold_dir = folder / f"fold_{fold}"
    device = device or default_device()
    t0 = time.perf_counter()
    reused = (fold_dir / "checkpoint_final.pth").is_file() and not force and not continue_training
    if not reused:
        if force and fold_dir.exists():
            shutil.rmtree(fold_dir)
        if budget is not None:
            run_env = budget.env()
        else:
            run_env = {} if stock else {"CLOUDKD_NNUNET_SEED": "" if seed is None else str(seed)}
        _dump_json(workspace.root / "training.json", {
            "dataset_id": dataset_id, "configuration": configuration, "trainer": trainer_name,
            "model_folder": str(folder), "fold": fold, "budget": asdict(budget) if budget else None,
            "seed": budget.seed if budget else seed, "stock": stock})
        with workspace.active({**augmentation_workers_env(device), **run_env}):
            from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

            nnunet_trainer = get_trainer_from_args(str(dataset_id), configuration, fold, trainer_name, PLANS,
                                                   continue_training, device=torch.device(device))
            maybe_load_checkpoint(nnunet_trainer, continue_training, False, None)
            nnunet_trainer.run_training()
            if validate:
                nnunet_trainer.perform_actual_validation(False)
    ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ckpt.get("logging", {})
    starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
    per_iter = None
    if starts and ends:
        per_epoch = float(np.median(np.asarray(ends) - np.asarray(starts)))
        per_iter = per_epoch / (budget.iters_per_epoch + budget.val_iters if budget else sum(NNUNET_ITERS))
    result = TrainResult(folder, fold, configuration, trainer_name, int(ckpt.get("current_epoch", 0)),
                         time.perf_counter() - t0, per_iter, reused)
    _record_teacher(workspace, dataset_id, result, budget)
    return result


def _record_teacher(workspace: Workspace, dataset_id: int, result: TrainResult, budget: Optional[Budget]) -> None:
    """``teacher.json``: the model ``teacher predict`` uses by default (folds trained so far are listed)."""
    info = _load_json(workspace.teacher_json) if workspace.teacher_json.is_file() else {}
    same = info.get("model_folder") == str(result.model_folder)
    folds = sorted(set(info.get("folds", [])) | {result.fold}) if same else [result.fold]
    _dump_json(workspace.teacher_json, {
        "dataset_id": dataset_id, "dataset_name": workspace.dataset_name(dataset_id),
        "configuration": result.configuration, "trainer": result.trainer, "plans": PLANS,
        "model_folder": str(result.model_folder), "folds": folds, "budget": asdict(budget) if budget else None,
    })


# ----------------------------------------------------------------------------------------------------------------
# info
# ----------------------------------------------------------------------------------------------------------------
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
    from ..student.unet import count_params

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


def info(workspace: Workspace, dataset_id: int = DEFAULT_DATASET_ID,
         configurations: Optional[Sequence[str]] = None) -> dict:
    """The plan(s) of a prepared and planned dataset, with parameter counts, and which folds are trained."""
    pf = plans_file(workspace, dataset_id)
    if not pf.is_file():
        raise DataError(f"{pf}: no plans yet; run 'cloudkd teacher train' (or 'teacher plan') first")
    plans = _load_json(pf)
    names = list(configurations) if configurations else [c for c in plans["configurations"]
                                                          if c == BASE_CONFIGURATION or c.startswith("2d_")]
    out = {"dataset": workspace.dataset_name(dataset_id), "plans_file": str(pf),
           "configurations": {c: describe_plan(plans, c) for c in names}}
    if workspace.teacher_json.is_file():
        out["teacher"] = _load_json(workspace.teacher_json)
    return out
