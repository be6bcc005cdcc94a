"""Training the teacher with nnU-Net's own trainer, within a budget on a CPU or on nnU-Net's schedule on a GPU.

Every run uses the project's ``nnUNetTrainerCloudKD`` (found through ``nnUNet_extTrainer``): nnU-Net's trainer
without the brightness, contrast and gamma augmentation that would destroy the absolute-reflectance cue
(``CLOUDKD_NNUNET_INTENSITY_AUG=1`` restores it), with an optional seed. ``stock=True`` (``--nnunet-defaults``)
runs nnU-Net's own ``nnUNetTrainer`` unchanged instead. The settings of a run are written to
``WORKDIR/training.json`` when it starts, so ``--continue`` resumes that run without repeating them.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..common.errors import DataError
from ..common.io import atomic_write
from ..common.outputs import folder_lock, remove_tree, replace_on_success
from .plans import Budget, add_budget_configuration, plan_and_preprocess, recipe
from .workspace import BASE_CONFIGURATION, BUDGET_TRAINER, DEFAULT_DATASET_ID, DEFAULT_TRAINER, NNUNET_ITERS, PLANS, Workspace, augmentation_workers_env, default_device, dump_json, load_json, model_folder


#: the results folder a retraining (--force) is built in, in WORKDIR, before it replaces the trained fold
SIDE_RESULTS = ".nnUNet_results.cloudkd-new"

#: budget fields that shape the run (a GPU uses nnU-Net's schedule and plan unless one of them is given)
SHAPE_FIELDS = ("epochs", "iters_per_epoch", "val_iters", "patch", "batch", "base_features", "max_features", "norm",
                "optimizer", "lr", "loss", "deep_supervision", "spatial", "oversample")

def check_fold(workspace: Workspace, dataset_id: int, fold: int, command: str = "teacher train") -> list:
    """A fold must be one of the location-grouped folds ``teacher prepare`` wrote to splits_final.json (nnU-Net
    would otherwise train fold 99 on a random 80:20 split that ignores locations); returns the splits (one
    ``{"train": [...], "val": [...]}`` per fold)."""
    splits = workspace.preprocessed / workspace.dataset_name(dataset_id) / "splits_final.json"
    if not splits.is_file():
        raise DataError(f"{splits}: missing; run 'cloudkd teacher prepare' first")
    folds = load_json(splits)
    if not 0 <= fold < len(folds):
        raise DataError(f"{command}: fold {fold} does not exist; {splits} has folds 0..{len(folds) - 1}")
    return folds


def training_record(workspace: Workspace) -> Optional[dict]:
    """The settings of the last training started in ``workspace`` (``WORKDIR/training.json``), or None."""
    path = workspace.root / "training.json"
    return load_json(path) if path.is_file() else None

@dataclass
class RunSettings:
    """What one ``teacher train`` call trains: a budget (None: nnU-Net's 2d plan and schedule), the seed of a
    budget-less run, and whether nnU-Net's own trainer runs unchanged (``stock``)."""

    budget: Optional[Budget]
    seed: Optional[int] = None
    stock: bool = False

def resolve_budget(workspace: Workspace, device: str, stock: bool = False, continue_training: bool = False,
                   recipe_name: Optional[str] = None, **given) -> RunSettings:
    """The run a ``teacher train`` call asks for.

    ``given`` are the budget options the user stated (None = not stated). ``continue_training`` takes the settings
    of the run recorded in ``training.json``, the stated options overriding them; on a GPU a budget is used only
    when a shaping option is stated (a seed alone keeps nnU-Net's schedule); ``stock`` is nnU-Net's own trainer.
    ``recipe_name`` starts a new run from a named recipe (``TEACHER_RECIPES``), on any device, the stated options
    overriding its fields.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if recipe_name is not None:
        if stock or continue_training:
            raise ValueError("--recipe starts a new run from a named recipe; it goes with neither --nnunet-defaults "
                             "nor --continue (which takes the recorded settings)")
        return RunSettings(Budget(**{**asdict(recipe(recipe_name)), **given}))
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
    #: the training's own time, summed over its epochs from nnU-Net's log (also for a reused fold)
    epoch_seconds: Optional[float] = None

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

    from ..common.cli import device_problem

    if stock and (budget is not None or seed is not None):
        raise ValueError("nnU-Net's own trainer (stock) takes neither a budget nor a seed")
    if force and continue_training:
        raise ValueError("--continue extends the trained fold and --force replaces it: give one")
    # everything that can be wrong with the arguments is checked before anything is planned, written or deleted
    problem = device_problem(device) if device else None
    if problem:
        raise DataError(f"teacher train: device {problem}")
    check_fold(workspace, dataset_id, fold)
    plan_and_preprocess(workspace, dataset_id, processes=processes)
    configuration = add_budget_configuration(workspace, dataset_id, budget) if budget else BASE_CONFIGURATION
    trainer_name = DEFAULT_TRAINER if stock else BUDGET_TRAINER
    folder = model_folder(workspace, dataset_id, configuration, trainer_name)
    fold_dir = folder / f"fold_{fold}"
    device = device or default_device()
    t0 = time.perf_counter()
    reused = (fold_dir / "checkpoint_final.pth").is_file() and not force and not continue_training
    if reused and budget is not None:
        # a trained fold is reused only for the budget it was trained to: the configuration names the recipe and
        # the size, not the epochs, and a recipe whose epochs changed would otherwise get the old teacher back
        done = trained_epochs(workspace, dataset_id, fold, budget)
        if done != budget.epochs:
            extend = f"--continue extends it to {budget.epochs}, " if done < budget.epochs else ""
            raise DataError(f"teacher train: fold {fold} in {folder} was trained for {done} epochs and this budget "
                            f"asks for {budget.epochs}; {extend}--force trains it again")
    if not reused:
        if budget is not None:
            run_env = budget.env()
        else:
            run_env = {} if stock else {"CLOUDKD_NNUNET_SEED": "" if seed is None else str(seed)}
        with folder_lock(fold_dir):  # a second training of this fold is refused while this one runs
            record = workspace.root / "training.json"
            old_record = record.read_bytes() if record.is_file() else None
            dump_json(record, {
                "dataset_id": dataset_id, "configuration": configuration, "trainer": trainer_name,
                "model_folder": str(folder), "fold": fold, "budget": asdict(budget) if budget else None,
                "seed": budget.seed if budget else seed, "stock": stock})
            env = {**augmentation_workers_env(device), **run_env}
            if force and fold_dir.exists():
                # replacement on success: nnU-Net trains the fold under a side results folder (its own layout,
                # WORKDIR/.nnUNet_results.cloudkd-new/<dataset>/<trainer__plans__configuration>/fold_K), which is
                # swapped in for fold_K once its checkpoint_final.pth exists; a failed or killed retraining leaves
                # the trained fold as it was
                side = workspace.root / SIDE_RESULTS
                built = side / folder.relative_to(workspace.results) / fold_dir.name
                remove_tree(side)  # left by a retraining that was killed (under the fold's lock)
                try:
                    with replace_on_success(fold_dir, build=built):
                        _run_nnunet(workspace, {**env, "nnUNet_results": str(side)}, dataset_id, configuration,
                                    fold, trainer_name, False, device, validate)
                        from .model import check_checkpoint

                        check_checkpoint(built / "checkpoint_final.pth", fold)
                        for f in built.parent.iterdir():  # plans.json, dataset.json ... of the model folder
                            if f.is_file():
                                shutil.copy2(f, folder / f.name)
                except BaseException:
                    if old_record is not None:  # --continue still means the run that trained the old fold
                        atomic_write(record, lambda t: Path(t).write_bytes(old_record))
                    raise
                finally:
                    remove_tree(side)
            else:
                _run_nnunet(workspace, env, dataset_id, configuration, fold, trainer_name, continue_training, device,
                            validate)
    ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ckpt.get("logging", {})
    starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
    per_iter = epoch_seconds = None
    if starts and ends:
        n = min(len(starts), len(ends))
        epoch_seconds = float(np.sum(np.asarray(ends[:n]) - np.asarray(starts[:n])))
        per_epoch = float(np.median(np.asarray(ends) - np.asarray(starts)))
        per_iter = per_epoch / (budget.iters_per_epoch + budget.val_iters if budget else sum(NNUNET_ITERS))
    result = TrainResult(folder, fold, configuration, trainer_name, int(ckpt.get("current_epoch", 0)),
                         time.perf_counter() - t0, per_iter, reused, epoch_seconds)
    _record_teacher(workspace, dataset_id, result, budget)
    return result

def trained_epochs(workspace: Workspace, dataset_id: int, fold: int, budget: Budget) -> Optional[int]:
    """The epochs that ``fold`` of ``budget``'s configuration was trained for (nnU-Net's final checkpoint), or None
    when that fold has not finished training."""
    import torch

    ckpt = model_folder(workspace, dataset_id, budget.configuration, BUDGET_TRAINER) / f"fold_{fold}" / \
        "checkpoint_final.pth"
    if not ckpt.is_file():
        return None
    return int(torch.load(ckpt, map_location="cpu", weights_only=False).get("current_epoch", 0))

def _run_nnunet(workspace: Workspace, env: dict, dataset_id: int, configuration: str, fold: int, trainer_name: str,
                continue_training: bool, device: str, validate: bool) -> None:
    """nnU-Net's own training of one fold (``run_training``), in ``workspace``'s environment plus ``env``."""
    import torch

    with workspace.active(env):
        from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

        nnunet_trainer = get_trainer_from_args(str(dataset_id), configuration, fold, trainer_name, PLANS,
                                               continue_training, device=torch.device(device))
        maybe_load_checkpoint(nnunet_trainer, continue_training, False, None)
        nnunet_trainer.run_training()
        if validate:
            nnunet_trainer.perform_actual_validation(False)


def _record_teacher(workspace: Workspace, dataset_id: int, result: TrainResult, budget: Optional[Budget]) -> None:
    """``teacher.json``: the model ``teacher predict`` uses by default (folds trained so far are listed)."""
    info = load_json(workspace.teacher_json) if workspace.teacher_json.is_file() else {}
    same = info.get("model_folder") == str(result.model_folder)
    folds = sorted(set(info.get("folds", [])) | {result.fold}) if same else [result.fold]
    record = {
        "dataset_id": dataset_id, "dataset_name": workspace.dataset_name(dataset_id),
        "configuration": result.configuration, "trainer": result.trainer, "plans": PLANS,
        "model_folder": str(result.model_folder), "folds": folds, "budget": asdict(budget) if budget else None,
    }
    fit = info.get("threshold")  # teacher fit-threshold's: kept while the fold it was fitted for is unchanged
    if same and fit and (result.reused or int(fit["fold"]) != result.fold):
        record["threshold"] = fit
    dump_json(workspace.teacher_json, record)
