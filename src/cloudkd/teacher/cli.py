"""``cloudkd teacher``: the nnU-Net v2 teacher: prepare, train, predict, info."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..common.cli import (at_least, check, check_memory, device_check, exclude_option, fail, finite,
                          folder_output_check, output_check, side, split_option, stage_app, threshold_option)
from ..common.errors import DataError
from .plans import LOSSES, OPTIMIZERS, TEACHER_RECIPES as RECIPES, Budget as B
from .workspace import DEFAULT_DATASET_ID, DEFAULT_NAME, name_problem

app = stage_app("3. Teacher: the nnU-Net v2 teacher: prepare, train (budget or nnU-Net defaults), predict, info.")


#: nnU-Net 2d training memory per pixel of batch x patch^2 at 32 features in the first stage (an estimate, low
#: rather than high: activations of encoder and decoder with gradients, about 3 KB/px; wider plans scale with it)
TEACHER_BYTES_PER_PIXEL = 3000
#: the patch side of nnU-Net's own 2d plan for 512-px chips (used when --batch is given without a budget patch)
NNUNET_2D_PATCH = 512

#: nnU-Net dataset ids have three digits
DATASET_ID = check(lambda v: None if 1 <= v <= 999 else f"nnU-Net dataset ids have three digits (1-999), got {v}")
WORKDIR_HELP = "Teacher workspace (nnU-Net raw / preprocessed / results live inside)."


@app.command("prepare")
def teacher_prepare(
    data: Path = typer.Argument(..., help="Dataset root (On Cloud N layout, with train_labels)."),
    workdir: Path = typer.Option(Path("runs/nnunet"), callback=folder_output_check, help=WORKDIR_HELP),
    dataset_id: int = typer.Option(DEFAULT_DATASET_ID, callback=DATASET_ID, help="nnU-Net dataset id (3 digits)."),
    name: str = typer.Option(DEFAULT_NAME, callback=check(name_problem), help="nnU-Net dataset name (letters, "
                                                                              "digits, '_', '-', '.')."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV (default: make --k location folds)."),
    k: int = typer.Option(5, callback=at_least(2), help="Number of location-grouped folds when no --folds is given."),
    seed: int = typer.Option(0, callback=at_least(0), help="Seed for the folds."),
    exclude: Optional[Path] = exclude_option(),
):
    """Convert a labelled dataset into an nnU-Net raw dataset and write splits_final.json from the folds."""
    from ..common.outputs import outputs_apart
    from ..data.folds import read_folds
    from .workspace import Workspace, claim_workspace
    from .convert import prepare

    # the output policy: WORKDIR new, empty or a workspace cloudkd wrote (reused), apart from the inputs
    outputs_apart([workdir], [data, folds_csv, exclude])
    claim_workspace(workdir)
    folds = read_folds(folds_csv) if folds_csv is not None else None
    r = prepare(data, Workspace(workdir), dataset_id, name, folds=folds, k=k, seed=seed, exclude=exclude,
                folds_source=str(folds_csv))
    claim_workspace(workdir, mark=True)  # marked once it holds a dataset
    verb = "already prepared (same data and folds)" if r.reused else f"prepared in {r.seconds:.1f} s"
    typer.echo(f"{r.dataset_name}: {r.n_chips} chips of {r.shape[0]}x{r.shape[1]} {verb} -> {r.raw_dir}")
    if r.excluded:
        typer.echo(f"left out {len(r.excluded)} chip(s), listed in {r.raw_dir / 'dataset.json'} (cloudkd_excluded)")
    typer.echo(f"splits: {r.splits_file}")


@app.command("train")
def teacher_train(
    workdir: Path = typer.Option(Path("runs/nnunet"), callback=folder_output_check, help=WORKDIR_HELP),
    dataset_id: int = typer.Option(DEFAULT_DATASET_ID, callback=DATASET_ID, help="nnU-Net dataset id."),
    fold: List[int] = typer.Option([0], callback=at_least(0), help="Fold(s) to train (repeat the option for "
                                                                   "several)."),
    device: str = typer.Option("auto", callback=device_check, help="auto, cpu, cuda or cuda:N."),
    nnunet_defaults: bool = typer.Option(False, help="nnU-Net's own trainer and defaults, unchanged (with its "
                                                     "brightness/contrast/gamma augmentation; unseeded)."),
    epochs: Optional[int] = typer.Option(None, callback=at_least(1), help=f"Budget: epochs (CPU default "
                                                                           f"{B.epochs})."),
    iters: Optional[int] = typer.Option(None, callback=at_least(1), help=f"Budget: training iterations per epoch (CPU "
                                                                          f""
                                                                          f"default {B.iters_per_epoch})."),
    val_iters: Optional[int] = typer.Option(None, callback=at_least(1), help=f"Budget: validation iterations per "
                                                                              f"epoch (default {B.val_iters})."),
    patch: Optional[int] = typer.Option(None, callback=side(32, multiple=32), help=f"Budget: square patch size "
                                                                                    f"(default {B.patch})."),
    batch: Optional[int] = typer.Option(None, callback=at_least(1), help=f"Budget: batch size (default {B.batch})."),
    base_features: Optional[int] = typer.Option(None, callback=at_least(1),
                                                help=f"Budget: features of the first stage (default "
                                                     f"{B.base_features}, nnU-Net's)."),
    max_features: Optional[int] = typer.Option(None, callback=at_least(1), help=f"Budget: feature cap (default "
                                                                                 f"{B.max_features}, nnU-Net's)."),
    seed: Optional[int] = typer.Option(None, callback=at_least(0), help="Random seed (CPU budgets: default 0, "
                                                                        "reproducible runs; on a GPU "
                                                  "it seeds nnU-Net's schedule without making it a budget)."),
    norm: Optional[str] = typer.Option(None, help="Budget: normalisation layers, batch (default: keeps absolute "
                                                  "brightness) or instance (nnU-Net's)."),
    recipe: Optional[str] = typer.Option(None, help=f"Start from a named teacher recipe ({', '.join(RECIPES)}); the "
                                                    f"budget options given override its fields."),
    optimizer: Optional[str] = typer.Option(None, help=f"Recipe: optimiser, {' or '.join(OPTIMIZERS)} (default sgd: "
                                                       f"nnU-Net's SGD + poly; adamw: AdamW + cosine)."),
    lr: Optional[float] = typer.Option(None, callback=finite(0, open_low=True), help="Recipe: initial learning rate (default "
                                                                     "1e-2 for sgd, 3e-3 for adamw)."),
    loss: Optional[str] = typer.Option(None, help=f"Recipe: loss, {' or '.join(LOSSES)} (default dice_ce, "
                                                  f"nnU-Net's)."),
    deep_supervision: Optional[bool] = typer.Option(None, "--deep-supervision/--no-deep-supervision",
                                                    help="Recipe: nnU-Net's deep supervision (default on)."),
    spatial: Optional[float] = typer.Option(None, callback=finite(0), help="Recipe: factor on the probabilities "
                                            "of nnU-Net's spatial rotation and scaling (default 1; 0 turns them off)."),
    oversample: Optional[float] = typer.Option(None, callback=finite(0, 1), help="Recipe: foreground-oversampled "
                                               "share of each batch (default 0.33, nnU-Net's)."),
    resume: bool = typer.Option(False, "--continue", help="Resume the last run started in WORKDIR from nnU-Net's "
                                                          "latest checkpoint, with its recorded settings (options "
                                                          "given override them, e.g. --epochs to extend it)."),
    force: bool = typer.Option(False, help="Retrain a fold that is already trained (the new fold replaces it when its "
                                           "training has finished; until then the trained fold stays as it was)."),
    validate: bool = typer.Option(False, help="Run nnU-Net's full validation of the fold at the end."),
):
    """Plan + preprocess (2d) if needed, then train the teacher within a budget (CPU) or nnU-Net's defaults."""
    from .workspace import Workspace, default_device
    from .train import check_fold, resolve_budget, train

    if resume and force:
        fail("--continue extends the trained fold and --force replaces it: give one", 2)
    dev = default_device() if device == "auto" else device
    ws = Workspace(workdir)
    try:
        run = resolve_budget(ws, dev, nnunet_defaults, resume, recipe, epochs=epochs, iters_per_epoch=iters,
                             val_iters=val_iters, patch=patch, batch=batch, base_features=base_features,
                             max_features=max_features, seed=seed, norm=norm, optimizer=optimizer, lr=lr, loss=loss,
                             deep_supervision=deep_supervision, spatial=spatial, oversample=oversample)
    except (ValueError, DataError) as exc:
        fail(str(exc), 2)
    budget, run_seed, stock = run.budget, run.seed, run.stock
    if batch is not None:  # like the student's check: an estimate, to refuse what cannot fit before planning
        side_px, width = (budget.patch, budget.base_features) if budget else (patch or NNUNET_2D_PATCH, 32)
        check_memory(TEACHER_BYTES_PER_PIXEL * width / 32 * batch * side_px * side_px,
                     f"teacher training with --batch {batch} at patch {side_px}", device=dev)
    if budget:
        typer.echo(f"device {dev}; budget {budget}")
    else:
        typer.echo(f"device {dev}; nnU-Net's 2d plan and schedule, " + (
            "nnUNetTrainer unchanged" if stock else
            f"nnUNetTrainerCloudKD (no intensity augmentation), seed {run_seed}"))
    for f in fold:  # every fold checked before any is trained (or, with --force, deleted)
        check_fold(ws, dataset_id, f)
    for f in fold:
        r = train(ws, dataset_id, f, budget, device=dev, continue_training=resume, force=force, validate=validate,
                  seed=run_seed, stock=stock)
        what = "already trained (reused; --force retrains, --continue extends)" if r.reused else \
            f"trained in {r.seconds:.0f} s"
        per_it = f", {r.seconds_per_iteration:.2f} s/iteration" if r.seconds_per_iteration else ""
        typer.echo(f"fold {f}: {what}; {r.epochs_done} epochs{per_it} -> {r.model_folder / f'fold_{f}'}")


@app.command("predict")
def teacher_predict(
    features: Path = typer.Option(..., help="A *_features folder (or dataset root) of chips."),
    masks_out: Optional[Path] = typer.Option(None, callback=output_check, help="Write masks {chip_id}.tif (submission "
                                                                               ""
                                                                               "format) here."),
    soft_out: Optional[Path] = typer.Option(None, callback=output_check, help="Write soft labels (uint8-quantised "
                                                                              "probabilities) here."),
    workdir: Path = typer.Option(Path("runs/nnunet"), callback=folder_output_check, help=WORKDIR_HELP),
    fold: List[int] = typer.Option([], callback=at_least(0), help="Fold(s) to ensemble (default: every trained "
                                                                  "fold)."),
    tta: bool = typer.Option(False, help="Mirroring test-time augmentation, as nnU-Net does (4x slower)."),
    device: str = typer.Option("auto", callback=device_check, help="auto, cpu, cuda or cuda:N."),
    threshold: Optional[float] = threshold_option(
        "Cloud probability threshold of the prediction rule (nodata pixels are always clear); default: the one "
        "'teacher fit-threshold' recorded for these folds, else 0.5.", default=None),
    split_name: Optional[str] = split_option(),
    force: bool = typer.Option(False, help="Replace the masks of another model already in the output folder(s)."),
):
    """Teacher masks and/or soft labels for a folder of chips (nnU-Net's own inference path)."""
    from contextlib import ExitStack

    from ..common.outputs import check_masks_folder, masks_output, model_fingerprint, outputs_apart
    from ..data.roots import resolve_split
    from .model import NnUNetTeacher, predict_folder
    from .workspace import Workspace, default_device

    if masks_out is None and soft_out is None:
        fail("nothing to write: give --masks-out and/or --soft-out", 2)
    if masks_out is not None and soft_out is not None:
        try:  # masks and soft labels are both {chip_id}.tif: one folder would mix (and replace) them
            outputs_apart([masks_out], [soft_out])
        except DataError:
            fail(f"--masks-out {masks_out} and --soft-out {soft_out}: give two folders apart (each would replace "
                 f"the other's {{chip_id}}.tif)", 2)
    outputs_apart([masks_out, soft_out], [features, workdir])
    for folder in (masks_out, soft_out):  # before the teacher is loaded (a minute for a large one)
        if folder is not None:
            check_masks_folder(folder)
    dev = default_device() if device == "auto" else device
    teacher = NnUNetTeacher.from_workspace(Workspace(workdir), folds=fold or None, tta=tta, device=dev)
    split = resolve_split(features, split_name)
    outputs_apart([masks_out, soft_out], [split.features_dir])
    if threshold is not None:
        teacher.threshold = threshold
    threshold = teacher.threshold
    who = f"teacher {workdir.resolve()} folds {list(teacher.folds)} (threshold {threshold}, tta {tta})"
    # the checkpoints' content: a teacher trained again in place is another producer
    weights = model_fingerprint([teacher.model_folder / f"fold_{f}" / "checkpoint_final.pth" for f in teacher.folds])
    with ExitStack() as stack:  # locked while written; a failure leaves nothing of this run behind
        into = [None if folder is None else stack.enter_context(masks_output(folder, who, force, weights))
                for folder in (masks_out, soft_out)]
        r = predict_folder(teacher, split.features_dir, *into, threshold=threshold)
    typer.echo(f"{r['n_chips']} chips, {r['ms_per_chip']:.0f} ms/chip inference (folds {list(teacher.folds)}, "
               f"threshold {threshold:g}, tta {tta}, {dev})" + (f"; masks -> {masks_out}" if masks_out else "")
               + (f"; soft labels -> {soft_out}" if soft_out else ""))


@app.command("fit-threshold")
def teacher_fit_threshold(
    workdir: Path = typer.Option(Path("runs/nnunet"), callback=folder_output_check, help=WORKDIR_HELP),
    fold: int = typer.Option(0, callback=at_least(0), help="The trained fold whose validation chips fit it."),
    dataset_id: int = typer.Option(DEFAULT_DATASET_ID, callback=DATASET_ID, help="nnU-Net dataset id."),
    device: str = typer.Option("auto", callback=device_check, help="auto, cpu, cuda or cuda:N."),
):
    """Fit the teacher's mask threshold on its fold's validation chips and record it for 'teacher predict'."""
    from .rule import fit_threshold
    from .workspace import Workspace, default_device

    rec = fit_threshold(Workspace(workdir), fold, dataset_id, default_device() if device == "auto" else device)
    curve = rec["val_jaccard"]
    typer.echo("validation Jaccard by threshold: " + ", ".join(f"{t} {j:.4f}" for t, j in curve.items()))
    best = rec["threshold"]
    typer.echo(f"fold {fold}: threshold {best:g} (validation Jaccard {curve[f'{best:g}']:.4f} on {rec['n_chips']} "
               f"chips) -> {Workspace(workdir).teacher_json}")


@app.command("info")
def teacher_info(
    workdir: Path = typer.Option(Path("runs/nnunet"), callback=folder_output_check, help=WORKDIR_HELP),
    dataset_id: int = typer.Option(DEFAULT_DATASET_ID, callback=DATASET_ID, help="nnU-Net dataset id."),
    configuration: List[str] = typer.Option([], help="Configuration(s) to describe (default: 2d and budgets)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (params, n_stages, features_per_stage, "
                                                       "patch_size, batch_size, ...)."),
):
    """The teacher's plan(s) and parameter counts."""
    import json as _json

    from .workspace import Workspace
    from .info import info

    d = info(Workspace(workdir), dataset_id, configuration or None)
    if as_json:
        typer.echo(_json.dumps(d, indent=2))
        return
    typer.echo(f"{d['dataset']} ({d['plans_file']})")
    for name, c in d["configurations"].items():
        typer.echo(f"  {name}: {c['network']} {c['params']:,} params, {c['n_stages']} stages, features "
                   f"{c['features_per_stage']}, patch {c['patch_size']}, batch {c['batch_size']}")
    if "teacher" in d:
        t = d["teacher"]
        typer.echo(f"trained teacher: {t['configuration']} ({t['trainer']}), folds {t['folds']}")
