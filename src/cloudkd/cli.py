"""The ``cloudkd`` command line: one typer app, thin, no logic of its own (it calls the library)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .data.chips import DataError
from .student import DEFAULT_KD

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cloud detection for Sentinel-2 chips and Landsat-8 patches: data, baselines, teacher, student, submission.")
baseline_app = typer.Typer(no_args_is_help=True, help="Baselines (first rows of every results table).")
threshold_app = typer.Typer(no_args_is_help=True, help="Classic brightness/whiteness thresholding.")
teacher_app = typer.Typer(no_args_is_help=True, help="The nnU-Net v2 teacher: prepare, train, predict, info.")
app.add_typer(baseline_app, name="baseline")
baseline_app.add_typer(threshold_app, name="threshold")
app.add_typer(teacher_app, name="teacher")
student_app = typer.Typer(no_args_is_help=True, help="The compact student U-Net family.")
app.add_typer(student_app, name="student")
landsat_app = typer.Typer(no_args_is_help=True, help="Landsat-8 (38-Cloud / 95-Cloud): generate, import, "
                                                     "scene-level scoring. Other commands take a 38-Cloud root "
                                                     "as --data / features as they are.")
app.add_typer(landsat_app, name="landsat")


_SPLIT = typer.Option(None, "--split", help="Split of a dataset root to use (train or test; default: train "
                                            "when the root has one, else test), e.g. test for a 38-Cloud root.")


def _fail(msg: str, code: int = 1):
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Console entry point: bad input ends with a one-line message naming the file, not a traceback."""
    try:
        app()
    except DataError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


# ----------------------------------------------------------------------------------------------------------------
@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset to (On Cloud N layout)."),
    n_train: int = typer.Option(200, help="Chips in the train split (with labels)."),
    n_test: int = typer.Option(60, help="Chips in the test split (held-out locations; labels in test_labels/)."),
    size: int = typer.Option(512, help="Chip size in pixels."),
    seed: int = typer.Option(0, help="Random seed: equal settings give identical files."),
    difficulty: float = typer.Option(0.7, min=0.0, max=1.0, help="0 easy .. 1 hard (0.7 = calibrated default)."),
    label_style: str = typer.Option("annotator", help="How clouds are labelled: annotator (generous smooth outlines, "
                                                      "the style measured on real labels) or opacity (the rule "
                                                      "before: smoothed opacity >= --label-threshold)."),
    label_threshold: float = typer.Option(0.3, help="The opacity rule's level (with --label-style opacity)."),
    workers: int = typer.Option(0, help="Processes (0 = one per core)."),
    overwrite: bool = typer.Option(False, help="Replace whatever is in OUT."),
    preview: bool = typer.Option(True, help="Write OUT/preview.png with sample chips."),
):
    """Generate a realistic cloud benchmark in the exact On Cloud N layout."""
    from .data.chips import resolve_split
    from .data.synthetic import SynthConfig, synthesize
    from .viz import plot_chips

    try:
        cfg = SynthConfig(n_train=n_train, n_test=n_test, size=size, seed=seed, difficulty=difficulty,
                          label_style=label_style, label_threshold=label_threshold)
    except ValueError as exc:
        _fail(str(exc), 2)
    res = synthesize(out, cfg, workers=workers, overwrite=overwrite)
    if res.reused:
        typer.echo(f"{out}: already holds this dataset (same config); nothing to do")
    else:
        n = n_train + n_test
        typer.echo(f"wrote {n} chips to {out} in {res.seconds:.1f} s ({1000 * res.seconds / n:.0f} ms/chip)")
    if preview:
        split = resolve_split(out, "train" if n_train else "test")
        ids = split.chip_ids()
        pick = ids[:: max(1, len(ids) // 6)][:6]
        typer.echo(f"preview: {plot_chips(split, pick, Path(out) / 'preview.png', title=f'{out} ({split.name})')}")


@app.command()
def preview(
    data: Path = typer.Argument(..., help="Dataset root or *_features folder."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    split: Optional[str] = typer.Option(None, help="train or test (default: train if present)."),
    n: int = typer.Option(6, help="Number of chips."),
    pred: List[Path] = typer.Option([], help="Prediction folder(s) to show beside the label."),
):
    """Draw chips (RGB, NIR, label, predictions) to a PNG."""
    from .data.chips import resolve_split
    from .viz import plot_chips

    s = resolve_split(data, split)
    ids = s.chip_ids()
    pick = ids[:: max(1, len(ids) // n)][:n]
    typer.echo(str(plot_chips(s, pick, out, {p.name: p for p in pred})))


@app.command()
def validate(
    data: Path = typer.Argument(..., help="Dataset root or *_features folder."),
    split: Optional[str] = typer.Option(None, help="train or test (default: train if present)."),
    size: Optional[int] = typer.Option(None, help="Required chip size (default: the first chip's)."),
):
    """Read every chip and label of a split and list every problem (exit 1 if any)."""
    from .data.chips import resolve_split, validate_split

    rep = validate_split(resolve_split(data, split), (size, size) if size else None, progress=True)
    if rep.ok:
        typer.echo(f"{rep.split.root} [{rep.split.name}]: {rep.n_chips} chips OK, shape {rep.shape}")
        return
    for e in rep.errors:
        typer.echo(e)
    _fail(f"{len(rep.errors)} problem(s) in {rep.n_chips} chips")


@app.command()
def folds(
    data: Path = typer.Argument(..., help="Dataset root or train_features folder."),
    out: Path = typer.Option(..., "--out", help="CSV to write (chip_id, location, fold)."),
    k: int = typer.Option(5, help="Number of folds."),
    seed: int = typer.Option(0, help="Seed for tie-breaking."),
):
    """Location-grouped K folds (no location in two folds), written to a CSV."""
    from .data.chips import load_index, resolve_split
    from .data.folds import make_folds, write_folds

    f = make_folds(load_index(resolve_split(data, "train"), require_labels=False), k=k, seed=seed)
    write_folds(f, out)
    counts = f.groupby("fold").agg(chips=("chip_id", "size"), locations=("location", "nunique"))
    typer.echo(counts.to_string())
    typer.echo(f"-> {out}")


@app.command()
def score(
    pred: Path = typer.Option(..., help="Folder of predicted masks {chip_id}.tif."),
    labels: Path = typer.Option(..., help="Folder of label masks {chip_id}.tif."),
    metadata: Optional[Path] = typer.Option(None, help="Metadata CSV for per-location results "
                                                       "(default: the labels folder's sibling *_metadata.csv)."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV: score one fold only."),
    fold: Optional[int] = typer.Option(None, help="The fold to score (with --folds)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON here."),
    report_dir: Optional[Path] = typer.Option(None, help="Where per_chip.csv / per_location.csv go "
                                                         "(default: PRED's sibling PRED_score/)."),
    workers: int = typer.Option(2, help="Reader threads."),
):
    """Leaderboard metric: one global Jaccard over all pixels of all chips, plus per-chip / per-location CSVs."""
    from .data.folds import read_folds
    from .metrics import EmptyUnionError
    from .scoring import score_folder

    chips = None
    if folds_csv is not None:
        if fold is None:
            _fail("--folds needs --fold")
        f = read_folds(folds_csv)
        chips = f.loc[f.fold == fold, "chip_id"].tolist()
        if not chips:
            _fail(f"{folds_csv}: fold {fold} has no chips")
    try:
        rep = score_folder(pred, labels, chips=chips, metadata=metadata, workers=workers, progress=True)
    except EmptyUnionError as exc:
        _fail(f"{exc} (no cloud pixel in any label or prediction)")
    report_dir = report_dir or pred.parent / f"{pred.name}_score"
    rep.write(report_dir, json_path)
    s = rep.summary()
    if rep.extra:
        typer.echo(f"warning: {len(rep.extra)} extra file(s) not among the expected chips: {rep.extra[:10]}")
    if rep.missing:
        typer.echo(f"refused: {len(rep.missing)} chip(s) have no prediction: {rep.missing[:50]}")
    for msg in rep.invalid[:50]:
        typer.echo(f"invalid: {msg}")
    if not rep.ok:
        _fail(f"incomplete or invalid submission ({len(rep.missing)} missing, {len(rep.invalid)} invalid)")
    typer.echo(f"global Jaccard {s['jaccard']:.5f}  (intersection {s['intersection']}, union {s['union']}, "
               f"precision {s['precision']:.4f}, recall {s['recall']:.4f})")
    typer.echo(f"{s['n_chips']} chips in {s['seconds']:.2f} s ({s['chips_per_s']} chips/s); "
               f"per-chip / per-location CSV in {report_dir}")
    if rep.per_location is not None:
        typer.echo(rep.per_location[["location", "n_chips", "jaccard", "precision", "recall"]]
                   .to_string(index=False, float_format=lambda v: f"{v:.4f}"))


@threshold_app.command("fit")
def threshold_fit(
    data: Path = typer.Argument(..., help="Dataset root or train_features folder (with labels)."),
    out: Path = typer.Option(..., "--out", help="JSON to write the fitted thresholds to."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV: fit without the validation fold."),
    val_fold: Optional[int] = typer.Option(None, help="Fold to leave out of the fit (with --folds)."),
    stride: int = typer.Option(4, help="Pixel subsampling stride for the fit."),
):
    """Fit brightness/whiteness thresholds on training chips to maximise the global Jaccard."""
    from .baselines.threshold import fit_threshold
    from .data.chips import load_index, resolve_split
    from .data.folds import read_folds, split_by_fold

    idx = load_index(resolve_split(data, "train"), require_labels=True)
    if folds_csv is not None:
        if val_fold is None:
            _fail("--folds needs --val-fold")
        idx, _ = split_by_fold(idx, read_folds(folds_csv), val_fold)
    model = fit_threshold(idx["features"], idx["label"], stride=stride, progress=True)
    model.save(out)
    typer.echo(f"brightness > {model.brightness_min:.4f} and whiteness < {model.whiteness_max:.4f}: "
               f"train global Jaccard {model.fit_jaccard:.4f} on {model.n_train_chips} chips -> {out}")


@threshold_app.command("predict")
def threshold_predict(
    model: Path = typer.Option(..., help="Thresholds JSON written by 'baseline threshold fit'."),
    features: Path = typer.Option(..., help="A *_features folder (or dataset root)."),
    out: Path = typer.Option(..., "--out", help="Folder for the masks {chip_id}.tif (submission format)."),
    split_name: Optional[str] = _SPLIT,
):
    """Apply fitted thresholds to a folder of chips, writing one mask per chip."""
    from .baselines.threshold import ThresholdModel, predict_folder
    from .data.chips import resolve_split

    m = ThresholdModel.load(model)
    s = resolve_split(features, split_name)
    n = predict_folder(m, s.features_dir, out, progress=True)
    typer.echo(f"wrote {n} masks to {out}")


# ----------------------------------------------------------------------------------------------------------------
WORKDIR_HELP = "Teacher workspace (nnU-Net raw / preprocessed / results live inside)."


@teacher_app.command("prepare")
def teacher_prepare(
    data: Path = typer.Argument(..., help="Dataset root (On Cloud N layout, with train_labels)."),
    workdir: Path = typer.Option(Path("runs/nnunet"), help=WORKDIR_HELP),
    dataset_id: int = typer.Option(501, help="nnU-Net dataset id (3 digits)."),
    name: str = typer.Option("OnCloudN", help="nnU-Net dataset name."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV (default: make --k location folds)."),
    k: int = typer.Option(5, help="Number of location-grouped folds when no --folds is given."),
    seed: int = typer.Option(0, help="Seed for the folds."),
):
    """Convert a labelled dataset into an nnU-Net raw dataset and write splits_final.json from the folds."""
    from .data.folds import read_folds
    from .teacher.nnunet import Workspace, prepare

    folds = read_folds(folds_csv) if folds_csv is not None else None
    r = prepare(data, Workspace(workdir), dataset_id, name, folds=folds, k=k, seed=seed)
    verb = "already prepared (same data and folds)" if r.reused else f"prepared in {r.seconds:.1f} s"
    typer.echo(f"{r.dataset_name}: {r.n_chips} chips of {r.shape[0]}x{r.shape[1]} {verb} -> {r.raw_dir}")
    typer.echo(f"splits: {r.splits_file}")


@teacher_app.command("train")
def teacher_train(
    workdir: Path = typer.Option(Path("runs/nnunet"), help=WORKDIR_HELP),
    dataset_id: int = typer.Option(501, help="nnU-Net dataset id."),
    fold: List[int] = typer.Option([0], help="Fold(s) to train (repeat the option for several)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    nnunet_defaults: bool = typer.Option(False, help="nnU-Net's own trainer and defaults, unchanged (with its "
                                                     "brightness/contrast/gamma augmentation; unseeded)."),
    epochs: Optional[int] = typer.Option(None, help="Budget: epochs (CPU default 5)."),
    iters: Optional[int] = typer.Option(None, help="Budget: training iterations per epoch (CPU default 50)."),
    val_iters: Optional[int] = typer.Option(None, help="Budget: validation iterations per epoch (default 5)."),
    patch: Optional[int] = typer.Option(None, help="Budget: square patch size (default 256)."),
    batch: Optional[int] = typer.Option(None, help="Budget: batch size (default 2)."),
    base_features: Optional[int] = typer.Option(None, help="Budget: features of the first stage (nnU-Net: 32)."),
    max_features: Optional[int] = typer.Option(None, help="Budget: feature cap (nnU-Net: 512)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (CPU budgets: default 0, reproducible runs; on a GPU "
                                                  "it seeds nnU-Net's schedule without making it a budget)."),
    norm: Optional[str] = typer.Option(None, help="Budget: normalisation layers, batch (default: keeps absolute "
                                                  "brightness) or instance (nnU-Net's)."),
    resume: bool = typer.Option(False, "--continue", help="Resume the last run started in WORKDIR from nnU-Net's "
                                                          "latest checkpoint, with its recorded settings (options "
                                                          "given override them, e.g. --epochs to extend it)."),
    force: bool = typer.Option(False, help="Retrain a fold that is already trained."),
    validate: bool = typer.Option(False, help="Run nnU-Net's full validation of the fold at the end."),
):
    """Plan + preprocess (2d) if needed, then train the teacher within a budget (CPU) or nnU-Net's defaults."""
    from .teacher.nnunet import Workspace, default_device, resolve_budget, train

    dev = default_device() if device == "auto" else device
    ws = Workspace(workdir)
    try:
        run = resolve_budget(ws, dev, nnunet_defaults, resume, epochs=epochs, iters_per_epoch=iters,
                             val_iters=val_iters, patch=patch, batch=batch, base_features=base_features,
                             max_features=max_features, seed=seed, norm=norm)
    except (ValueError, DataError) as exc:
        _fail(str(exc), 2)
    budget, run_seed, stock = run.budget, run.seed, run.stock
    if budget:
        typer.echo(f"device {dev}; budget {budget}")
    else:
        typer.echo(f"device {dev}; nnU-Net's 2d plan and schedule, " + (
            "nnUNetTrainer unchanged" if stock else
            f"nnUNetTrainerCloudKD (no intensity augmentation), seed {run_seed}"))
    for f in fold:
        r = train(ws, dataset_id, f, budget, device=dev, continue_training=resume, force=force, validate=validate,
                  seed=run_seed, stock=stock)
        what = "already trained (reused; --force retrains, --continue extends)" if r.reused else \
            f"trained in {r.seconds:.0f} s"
        per_it = f", {r.seconds_per_iteration:.2f} s/iteration" if r.seconds_per_iteration else ""
        typer.echo(f"fold {f}: {what}; {r.epochs_done} epochs{per_it} -> {r.model_folder / f'fold_{f}'}")


@teacher_app.command("predict")
def teacher_predict(
    features: Path = typer.Option(..., help="A *_features folder (or dataset root) of chips."),
    masks_out: Optional[Path] = typer.Option(None, help="Write masks {chip_id}.tif (submission format) here."),
    soft_out: Optional[Path] = typer.Option(None, help="Write soft labels (uint8-quantised probabilities) here."),
    workdir: Path = typer.Option(Path("runs/nnunet"), help=WORKDIR_HELP),
    fold: List[int] = typer.Option([], help="Fold(s) to ensemble (default: every trained fold)."),
    tta: bool = typer.Option(False, help="Mirroring test-time augmentation, as nnU-Net does (4x slower)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    split_name: Optional[str] = _SPLIT,
):
    """Teacher masks and/or soft labels for a folder of chips (nnU-Net's own inference path)."""
    from .data.chips import resolve_split
    from .teacher.model import NnUNetTeacher, predict_folder
    from .teacher.nnunet import Workspace, default_device

    if masks_out is None and soft_out is None:
        _fail("nothing to write: give --masks-out and/or --soft-out")
    dev = default_device() if device == "auto" else device
    teacher = NnUNetTeacher.from_workspace(Workspace(workdir), folds=fold or None, tta=tta, device=dev)
    split = resolve_split(features, split_name)
    r = predict_folder(teacher, split.features_dir, masks_out, soft_out)
    typer.echo(f"{r['n_chips']} chips, {r['ms_per_chip']:.0f} ms/chip inference (folds {list(teacher.folds)}, "
               f"tta {tta}, {dev})" + (f"; masks -> {masks_out}" if masks_out else "")
               + (f"; soft labels -> {soft_out}" if soft_out else ""))


@teacher_app.command("info")
def teacher_info(
    workdir: Path = typer.Option(Path("runs/nnunet"), help=WORKDIR_HELP),
    dataset_id: int = typer.Option(501, help="nnU-Net dataset id."),
    configuration: List[str] = typer.Option([], help="Configuration(s) to describe (default: 2d and budgets)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (params, n_stages, features_per_stage, "
                                                       "patch_size, batch_size, ...)."),
):
    """The teacher's plan(s) and parameter counts."""
    import json as _json

    from .teacher.nnunet import Workspace, info

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


# ----------------------------------------------------------------------------------------------------------------
@student_app.command("list")
def student_list(as_json: bool = typer.Option(False, "--json", help="Print {preset: params} as JSON.")):
    """Student presets and their parameter counts (4 bands in, 1 cloud logit out)."""
    import json as _json

    from .student.models import list_presets
    from .student.unet import PRESETS

    presets = list_presets()
    if as_json:
        typer.echo(_json.dumps(presets))
        return
    for name, n in presets.items():
        typer.echo(f"{name:8s} {n:>9,d} params  widths {PRESETS[name]['widths']}  ({46_325_422 / n:.0f}x smaller "
                   f"than nnU-Net's 46.3 M 2d plan)")


def _fit(data: Path, out: Path, model: str, folds_csv: Optional[Path], val_fold: int, epochs: int, batch: int,
         crop: int, lr: float, label_weight: float, kd_weight: float, kd: str, temperature: float,
         soft: Optional[Path], teacher_nnunet: Optional[Path], teacher_onnx: Optional[Path], onnx_output: str,
         unlabelled: Optional[Path], steps: Optional[int], accelerator: str, devices: int, num_nodes: int,
         strategy: str, workers: int, seed: int, resume: bool, cloud_paste: float, boundary_ignore: int):
    from .student.train import TrainConfig, fit

    cfg = TrainConfig(data=str(data), out=str(out), model=model, folds=str(folds_csv) if folds_csv else None,
                      val_fold=val_fold, epochs=epochs, batch_size=batch, crop=crop, lr=lr,
                      label_weight=label_weight, kd_weight=kd_weight, kd=kd, temperature=temperature,
                      soft_dir=str(soft) if soft else None, teacher_nnunet=str(teacher_nnunet) if teacher_nnunet
                      else None, teacher_onnx=str(teacher_onnx) if teacher_onnx else None,
                      teacher_onnx_output=onnx_output, unlabelled=str(unlabelled) if unlabelled else None,
                      limit_train_batches=steps, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                      strategy=strategy, num_workers=workers, seed=seed, resume=resume, cloud_paste=cloud_paste,
                      boundary_ignore=boundary_ignore)
    try:
        r = fit(cfg)
    except ValueError as exc:
        _fail(str(exc))
    if r.val_jaccard is not None:
        typer.echo(f"{model}: {r.params:,} params; best val global Jaccard {r.val_jaccard:.4f} (fold {val_fold}); "
                   f"{r.seconds:.0f} s; -> {out / 'student.pt'}")


_DATA = typer.Argument(..., help="Labelled dataset root (train split, On Cloud N layout).")
_OUT = typer.Option(..., "--out", help="Run folder (checkpoints, logs, student.pt, student.json).")
_FOLDS = typer.Option(None, "--folds", help="Folds CSV (default: location folds made from the data).")


def _train_options(distill: bool):
    """The shared options of 'train' and 'distill' (they differ in the defaults of the loss weights)."""
    return dict(
        model=typer.Option("unet-s", help="Preset (cloudkd student list), unet:W1-W2-..., or smp:Arch:encoder."),
        val_fold=typer.Option(0, help="Validation fold (whole locations)."),
        epochs=typer.Option(10, help="Epochs."),
        batch=typer.Option(8, help="Batch size per device."),
        crop=typer.Option(256, help="Random crop size for training."),
        lr=typer.Option(3e-3, help="AdamW learning rate (cosine schedule)."),
        label_weight=typer.Option(1.0, help="Weight of BCE + Dice on labels (0: distil without labels)."),
        kd_weight=typer.Option(1.0 if distill else 0.0, help="Weight of the distillation loss."),
        kd=typer.Option(DEFAULT_KD, help="Distillation loss: pixel (temperature KL per pixel) or cwd "
                                      "(channel-wise spatial distribution)."),
        temperature=typer.Option(2.0, help="Distillation temperature."),
        soft=typer.Option(None, help="Offline teacher: folder of soft labels for the training chips."),
        teacher_nnunet=typer.Option(None, help="Online teacher: a trained nnU-Net workdir (cloudkd teacher)."),
        teacher_onnx=typer.Option(None, help="Online teacher: any ONNX segmentation model (normalised input)."),
        onnx_output=typer.Option("logits", help="What the ONNX teacher outputs: logits or probabilities."),
        unlabelled=typer.Option(None, help="Extra unlabelled chips to distil on (needs --label-weight 0)."),
        steps=typer.Option(None, help="Training steps per epoch (default: one pass over the chips)."),
        accelerator=typer.Option("auto", help="auto, cpu, gpu."),
        devices=typer.Option(1, help="Devices (processes) per node."),
        num_nodes=typer.Option(1, help="Nodes."),
        strategy=typer.Option("auto", help="Lightning strategy, e.g. ddp."),
        workers=typer.Option(0, help="Data loader workers."),
        seed=typer.Option(0, help="Random seed."),
        resume=typer.Option(False, help="Resume from OUT/checkpoints/last.ckpt."),
        cloud_paste=typer.Option(0.0, help="Cloud paste: probability that a low-cover chip of a batch receives a "
                                           "cloudy batch-mate's labelled cloud (0 = off)."),
        boundary_ignore=typer.Option(0, help="Boundary-tolerant loss: px on both sides of label outlines left out "
                                             "of BCE + Dice (0 = off)."),
    )


_T = _train_options(False)
_D = _train_options(True)


@app.command()
def train(data: Path = _DATA, out: Path = _OUT, folds_csv: Optional[Path] = _FOLDS,
          model: str = _T["model"], val_fold: int = _T["val_fold"], epochs: int = _T["epochs"],
          batch: int = _T["batch"], crop: int = _T["crop"], lr: float = _T["lr"],
          label_weight: float = _T["label_weight"], kd_weight: float = _T["kd_weight"], kd: str = _T["kd"],
          temperature: float = _T["temperature"], soft: Optional[Path] = _T["soft"],
          teacher_nnunet: Optional[Path] = _T["teacher_nnunet"], teacher_onnx: Optional[Path] = _T["teacher_onnx"],
          onnx_output: str = _T["onnx_output"], unlabelled: Optional[Path] = _T["unlabelled"],
          steps: Optional[int] = _T["steps"], accelerator: str = _T["accelerator"], devices: int = _T["devices"],
          num_nodes: int = _T["num_nodes"], strategy: str = _T["strategy"], workers: int = _T["workers"],
          seed: int = _T["seed"], resume: bool = _T["resume"],
          cloud_paste: float = _T["cloud_paste"], boundary_ignore: int = _T["boundary_ignore"]):
    """Train a student or any smp model on labels (add a teacher to distil; see 'distill')."""
    _fit(**locals())


@app.command()
def distill(data: Path = _DATA, out: Path = _OUT, folds_csv: Optional[Path] = _FOLDS,
            model: str = _D["model"], val_fold: int = _D["val_fold"], epochs: int = _D["epochs"],
            batch: int = _D["batch"], crop: int = _D["crop"], lr: float = _D["lr"],
            label_weight: float = _D["label_weight"], kd_weight: float = _D["kd_weight"], kd: str = _D["kd"],
            temperature: float = _D["temperature"], soft: Optional[Path] = _D["soft"],
            teacher_nnunet: Optional[Path] = _D["teacher_nnunet"], teacher_onnx: Optional[Path] = _D["teacher_onnx"],
            onnx_output: str = _D["onnx_output"], unlabelled: Optional[Path] = _D["unlabelled"],
            steps: Optional[int] = _D["steps"], accelerator: str = _D["accelerator"], devices: int = _D["devices"],
            num_nodes: int = _D["num_nodes"], strategy: str = _D["strategy"], workers: int = _D["workers"],
            seed: int = _D["seed"], resume: bool = _D["resume"],
            cloud_paste: float = _D["cloud_paste"], boundary_ignore: int = _D["boundary_ignore"]):
    """Distil a teacher into a student: offline (--soft) or online (--teacher-nnunet / --teacher-onnx)."""
    if not (soft or teacher_nnunet or teacher_onnx):
        _fail("distill needs a teacher: --soft DIR (offline) or --teacher-nnunet WORKDIR / --teacher-onnx FILE")
    _fit(**locals())


@app.command("real-bench")
def real_bench(
    data: Path = typer.Argument(..., help="Labelled chip folder (On Cloud N layout), e.g. ../shared/data/real_labelled."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions, per_chip.csv, summary.csv/json, real_chips.png."),
    threshold: Optional[Path] = typer.Option(None, help="A fitted threshold model (threshold.json)."),
    teacher_nnunet: Optional[Path] = typer.Option(None, help="A trained nnU-Net teacher workdir."),
    student: List[Path] = typer.Option([], help="Student run folder(s) (cloudkd train/distill); repeatable."),
    onnx: List[Path] = typer.Option([], help="Exported ONNX model(s) (cloudkd export); repeatable."),
    peer: str = typer.Option("auto", help="The pretrained ukis-csmask peer: auto (when installed), yes, no."),
    split: Optional[str] = _SPLIT,
):
    """Score every given model side by side on labelled (real) chips with the leaderboard metric."""
    from .teacher import peer as peer_mod
    from .evaluate.realchips import (nnunet_method, onnx_method, peer_method, run_real_bench, student_method,
                                     threshold_method)

    if peer not in ("auto", "yes", "no"):
        _fail(f"--peer must be auto, yes or no, got {peer!r}", 2)
    methods = [threshold_method(threshold)] if threshold else []
    if teacher_nnunet:
        methods.append(nnunet_method(teacher_nnunet))
    methods += [student_method(r) for r in student] + [onnx_method(f) for f in onnx]
    if peer == "yes" or (peer == "auto" and peer_mod.available()):
        methods.append(peer_method())
    elif peer == "auto":
        typer.echo(f"(the pretrained peer is not installed; {peer_mod.INSTALL} adds it)")
    r = run_real_bench(data, methods, out, split=split)
    from .demo import format_table

    typer.echo(format_table(r.rows, list(r.summary.columns)))
    typer.echo(f"-> {out / 'summary.csv'}, {out / 'per_chip.csv'}, {r.figure}")


@app.command()
def predict(
    model: Path = typer.Option(..., help="A student run folder (student.json + student.pt)."),
    features: Path = typer.Option(..., help="A *_features folder (or dataset root)."),
    out: Path = typer.Option(..., "--out", help="Folder for the masks {chip_id}.tif (submission format)."),
    batch: int = typer.Option(8, help="Chips per batch."),
    tta: bool = typer.Option(False, help="Average logits over flips."),
    split_name: Optional[str] = _SPLIT,
):
    """Masks for a folder of chips from a trained student."""
    from .data.chips import resolve_split
    from .predict import predict_folder
    from .student.train import load_student

    r = predict_folder(load_student(model), resolve_split(features, split_name).features_dir, out, batch_size=batch,
                       tta=tta)
    typer.echo(f"{r['n_chips']} masks -> {out}; {r['ms_per_chip']:.1f} ms/chip model, "
               f"{r['wall_ms_per_chip']:.1f} ms/chip with I/O")


@app.command()
def pack(
    checkpoint: Path = typer.Option(..., help="A student run folder (or its student.pt / a Lightning .ckpt in it)."),
    out: Path = typer.Option(Path("submission/submission.zip"), "--out", help="The zip to write."),
    threshold: float = typer.Option(0.5, help="Cloud probability threshold."),
    tta: bool = typer.Option(False, help="Average logits over flips in main.py."),
    batch: int = typer.Option(8, help="Chips per batch in main.py."),
    chip_size: int = typer.Option(512, help="Chip side in pixels (512 in the challenge)."),
):
    """Pack a trained model with the frozen submission/main.py into a submission zip."""
    from .submission.pack import pack as do_pack

    r = do_pack(checkpoint, out, threshold=threshold, tta=tta, batch_size=batch, chip_size=chip_size)
    typer.echo(f"{r.zip_path}: {r.bytes:,} bytes ({r.bytes / 1024:.0f} KiB); model {r.config['model']['name']} "
               f"({r.params:,} params), threshold {threshold}, tta {tta}")


@app.command("runtime-test")
def runtime_test(
    zip_path: Path = typer.Option(..., "--zip", help="The submission zip."),
    data: Path = typer.Option(..., help="Chips to run on: a dataset root (its test split) or a *_features folder."),
    labels: Optional[Path] = typer.Option(None, help="Labels folder (or dataset root) to score the predictions."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the verdict as JSON here."),
    size: Optional[int] = typer.Option(None, help="Expected mask side (default: the packed chip size)."),
    keep: Optional[Path] = typer.Option(None, help="Use (and keep) this folder as the emulated /codeexecution."),
    quiet: bool = typer.Option(False, help="Do not echo main.py's log."),
):
    """Emulate the On Cloud N runtime: unzip, run main.py with no arguments, validate, score."""
    from .submission.emulate import runtime_test as emulate

    v = emulate(zip_path, data, labels=labels, json_out=json_out, size=size, keep=keep, echo=not quiet)
    for line in v["reasons"]:
        typer.echo(f"FAIL: {line}")
    score = f"; global Jaccard {v['jaccard']:.4f}" if v["jaccard"] is not None else ""
    typer.echo(f"runtime-test {'passed' if v['ok'] else 'FAILED'}: {v['n_chips']} chips, {len(v['missing'])} "
               f"missing, {len(v['extra'])} extra, {len(v['invalid'])} invalid, main.py {v['seconds']} s{score}")
    if not v["ok"]:
        raise typer.Exit(1)


@app.command()
def export(
    checkpoint: Path = typer.Option(..., help="A student run folder (or a file in it)."),
    out: Path = typer.Option(..., "--out", help="Folder for the ONNX artefacts and export.json."),
    calib: Optional[Path] = typer.Option(None, help="Chips (a *_features folder or dataset root) to calibrate int8."),
    heldout: Optional[Path] = typer.Option(None, help="Other chips for the checks (default: more calib chips)."),
    n_calib: int = typer.Option(16, help="Calibration chips."),
    n_check: int = typer.Option(8, help="Chips for the checks."),
    size: int = typer.Option(512, help="Chip side for the fixed-shape model and the cost report."),
    int8: bool = typer.Option(True, help="Also write the int8 model (needs --calib)."),
    memory: bool = typer.Option(True, help="Measure the peak memory of one inference per artefact."),
):
    """ONNX fp32 (dynamic and fixed batch) and int8 export, checked against PyTorch, with a size/cost report."""
    from .data.chips import resolve_split
    from .export import INT8_MIN_IOU, export as do_export

    def feats(p):  # a dataset root or a *_features folder (resolve_split takes both)
        return None if p is None else resolve_split(p).features_dir

    rep = do_export(checkpoint, out, calib=feats(calib), heldout=feats(heldout), n_calib=n_calib, n_check=n_check,
                    size=size, int8=int8 and calib is not None, measure_memory=memory)
    typer.echo(f"{'artefact':14s} {'params':>9s} {'bytes':>10s} {'GMACs/chip':>10s} {'peak MB':>8s} {'infer MB':>8s}")
    for name, a in rep.artefacts.items():
        typer.echo(f"{name:14s} {a['params']:>9,d} {a['bytes']:>10,d} {a['macs'] / 1e9:>10.2f} "
                   f"{a.get('peak_rss_mb', float('nan')):>8.0f} {a.get('inference_mb', float('nan')):>8.0f}")
    c = rep.checks
    if "onnx_fp32_max_abs_diff" in c:
        typer.echo(f"ONNX fp32 vs PyTorch on {c['n_check_chips']} chips: max abs logit diff "
                   f"{c['onnx_fp32_max_abs_diff']:.2e}, mask agreement {c['onnx_fp32_mask_agreement']:.6f}")
    if rep.int8_ok is not None:
        verdict = "OK" if rep.int8_ok else f"BELOW the {INT8_MIN_IOU} target: keep the fp32 model"
        typer.echo(f"int8 vs fp32 mask IoU {c['int8_vs_fp32_mask_iou']:.4f} on {c['n_check_chips']} held-out chips "
                   f"(calibrated on {c['n_calib_chips']}): {verdict}")
    elif calib is None:
        typer.echo("no --calib chips: int8 export and the checks on real inputs were skipped")
    typer.echo(f"report: {out / 'export.json'}")


@app.command("predict-scene")
def predict_scene_cmd(
    scene: Path = typer.Argument(..., help="Folder with B02/B03/B04/B08 band files, or one 4-band TIFF."),
    model: Path = typer.Option(..., help="A student run folder, or an exported .onnx model."),
    out: Path = typer.Option(..., "--out", help="Output mask GeoTIFF (uint8, 1 = cloud)."),
    tile: int = typer.Option(512, help="Tile side."),
    overlap: int = typer.Option(64, help="Overlap between tiles (blended)."),
    batch: int = typer.Option(4, help="Tiles per batch."),
    threshold: float = typer.Option(0.5, help="Cloud probability threshold."),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
):
    """Cloud mask of a whole scene by overlapping, blended tiles, in bounded memory."""
    from .infer import logit_threshold
    from .scene import onnx_predictor, predict_scene, torch_predictor

    if threads:
        import torch

        torch.set_num_threads(threads)
    if model.suffix == ".onnx":
        fn = onnx_predictor(model, threads)
    else:
        from .student.models import load_student

        fn = torch_predictor(load_student(model))
    r = predict_scene(scene, out, fn, tile=tile, overlap=overlap, batch_size=batch,
                      threshold_logit=logit_threshold(threshold))
    typer.echo(f"{r['height']}x{r['width']} scene, {r['tiles']} tiles in {r['seconds']:.1f} s -> {out}"
               + (" (georeferenced)" if r["georeferenced"] else ""))


@app.command()
def downlink(
    pred: Path = typer.Option(..., help="A folder of predicted chip masks, or one scene mask TIFF."),
    labels: Optional[Path] = typer.Option(None, help="Labels: a folder (chips) or a mask TIFF (scene)."),
    features: Optional[Path] = typer.Option(None, help="The chips' features folder (bytes from the band files)."),
    tile: int = typer.Option(512, help="For a scene: chip size the scene is cut into."),
    thresholds: str = typer.Option("0,0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,1",
                                   help="Cloud-cover thresholds, comma-separated."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for downlink.json and downlink.png."),
):
    """Downlink savings of a cloud mask: chips/pixels/bytes discarded per cloud-cover threshold, clear pixels lost."""
    import json as _json

    from . import downlink as dl
    from .data.chips import read_mask

    ts = [float(t) for t in thresholds.split(",") if t.strip()]
    if pred.is_dir():
        stats = dl.stats_from_folders(pred, labels, features)
    else:
        mask = read_mask(pred)
        lab = None if labels is None else read_mask(labels, what="label")
        stats = dl.stats_from_scene(mask, tile, lab)
    summ = dl.summarise(stats, ts)
    typer.echo(f"{summ['n_chips']} chips, {summ['bytes'] / 1e6:.1f} MB, mean predicted cloud "
               f"{100 * summ['mean_cloud_fraction']:.1f}%")
    typer.echo("threshold  chips_discarded  pixels_discarded  bytes_saved_MB  saved%" +
               ("  clear_lost%" if summ["labelled"] else ""))
    for r in summ["chip_policy"]:
        typer.echo(f"{r['threshold']:9.2f}  {100 * r['chips_discarded']:14.1f}%  {100 * r['pixels_discarded']:15.1f}%  "
                   f"{r['bytes_saved'] / 1e6:14.1f}  {100 * r['bytes_saved_share']:5.1f}%" +
                   (f"  {100 * r['clear_lost']:10.2f}%" if summ["labelled"] else ""))
    pp = summ["pixel_policy"]
    typer.echo(f"pixel policy (drop every cloudy pixel): {100 * pp['pixels_discarded']:.1f}% of pixels dropped" +
               (f", {100 * pp['clear_lost']:.2f}% of clear pixels lost" if "clear_lost" in pp else ""))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "downlink.json").write_text(_json.dumps(summ, indent=2))
        typer.echo(f"-> {out / 'downlink.json'}, {dl.plot(summ, out / 'downlink.png')}")


@app.command("bench")
def bench_cmd(
    data: Path = typer.Option(Path("data/generated/demo"), help="Labelled held-out chips (dataset root: its test "
                                                                 "split, or a *_features folder)."),
    demo_dir: Path = typer.Option(Path("runs/demo"), "--demo", help="Where make demo left its models."),
    student: Optional[Path] = typer.Option(None, help="Student run (default DEMO/student)."),
    resnet34: Optional[Path] = typer.Option(None, help="smp ResNet-34 run (default DEMO/distill/resnet34)."),
    export_dir: Optional[Path] = typer.Option(None, help="cloudkd export folder (default DEMO/export; made if "
                                                         "missing)."),
    threads: int = typer.Option(2, help="Threads for every method."),
    batch: int = typer.Option(8, help="Batch size of the throughput pass."),
    n_latency: int = typer.Option(16, help="Chips timed one by one."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N chips."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for bench.md, bench.json, bench.png."),
):
    """Thresholding, teacher, ResNet-34, student (PyTorch, ONNX fp32, ONNX int8) side by side."""
    import json as _json

    from .bench import bench, plot, to_markdown
    from .data.chips import resolve_split
    from .export import export as do_export

    split = resolve_split(data, "test") if not data.name.endswith("_features") else resolve_split(data)
    student = student or demo_dir / "student"
    resnet34 = resnet34 or demo_dir / "distill" / "resnet34"
    export_dir = export_dir or demo_dir / "export"
    models = {"thresholding": demo_dir / "threshold.json", "nnunet_teacher": demo_dir / "nnunet",
              "smp_resnet34": resnet34, "student_torch": student}
    if (student / "student.json").is_file() and not (export_dir / "model_int8.onnx").is_file():
        typer.echo(f"exporting {student} -> {export_dir}")
        train = resolve_split(split.root, "train").features_dir if (split.root / "train_features").is_dir() else None
        do_export(student, export_dir, calib=train, heldout=split.features_dir if train else None, int8=bool(train))
    models["student_onnx_fp32"] = export_dir / "model_fp32.onnx"
    models["student_onnx_int8"] = export_dir / "model_int8.onnx"
    present = {k: v for k, v in models.items() if Path(v).exists()}
    for k in models:
        if k not in present:
            typer.echo(f"skipping {k}: {models[k]} not found")
    rows = bench({k: str(v) for k, v in present.items()}, str(split.features_dir), str(split.labels_dir),
                 threads=threads, batch=batch, n_latency=n_latency, limit=limit)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows)
    (out / "bench.md").write_text(md + "\n")
    (out / "bench.json").write_text(_json.dumps(rows, indent=2))
    typer.echo(md)
    typer.echo(f"-> {out / 'bench.md'}, {out / 'bench.json'}, {plot(rows, out / 'bench.png')}")


# ----------------------------------------------------------------------------------------------------------------
@landsat_app.command("synth")
def landsat_synth(
    out: Path = typer.Argument(..., help="Folder to write 38-Cloud_training/ and 38-Cloud_test/ to."),
    train_scenes: int = typer.Option(6, help="Training scenes (patches + per-patch gt + non-empty list)."),
    test_scenes: int = typer.Option(3, help="Test scenes (patches + whole-scene gts), at unseen locations."),
    min_grid: int = typer.Option(2, help="Fewest patches per scene side (scenes are ~384 px x this)."),
    max_grid: int = typer.Option(3, help="Most patches per scene side."),
    seed: int = typer.Option(0, help="Random seed: equal settings give identical files."),
    difficulty: float = typer.Option(0.7, min=0.0, max=1.0, help="0 easy .. 1 hard."),
    overwrite: bool = typer.Option(False, help="Replace whatever is in OUT."),
):
    """Generate Landsat-8-like scenes at 30 m, cut into 384x384 patches in the exact 38-Cloud layout."""
    from .data.synthetic import Landsat38Config, synthesize_38cloud

    try:
        cfg = Landsat38Config(n_train_scenes=train_scenes, n_test_scenes=test_scenes, min_grid=min_grid,
                              max_grid=max_grid, seed=seed, difficulty=difficulty)
    except ValueError as exc:
        _fail(str(exc))
    res = synthesize_38cloud(out, cfg, overwrite=overwrite)
    if res.reused:
        typer.echo(f"{out}: already holds this dataset (same config); nothing to do")
    else:
        typer.echo(f"wrote {train_scenes} training + {test_scenes} test scenes to {out} in {res.seconds:.1f} s")


@landsat_app.command("import")
def landsat_import(
    root: Path = typer.Argument(..., help="A 38-Cloud / 95-Cloud root (or one of its *_training / *_test folders)."),
    out: Optional[Path] = typer.Option(None, help="Where the On Cloud N view goes (default: ROOT.oncloudn beside "
                                                  "ROOT, or $CLOUDKD_LANDSAT_CACHE/ROOT.oncloudn)."),
    force: bool = typer.Option(False, help="Import again even when the source is unchanged."),
):
    """Write the patches in the On Cloud N layout (the other commands also do this by themselves, once)."""
    from .data.landsat import import_38cloud, imported_root

    r = import_38cloud(root, out or imported_root(root), force=force)
    verb = "up to date, reused" if r.reused else f"imported in {r.seconds:.1f} s"
    for split in r.n_patches:
        typer.echo(f"{split}: {r.n_patches[split]} patches of {r.n_scenes[split]} scenes "
                   f"({r.n_empty[split]} empty patches left out)")
    typer.echo(f"{r.root}: {verb}")


@landsat_app.command("score")
def landsat_score(
    pred: Path = typer.Option(..., help="Folder of predicted patch masks {patch}.tif (from predict / teacher "
                                        "predict / baseline threshold predict)."),
    data: Path = typer.Option(..., help="The 38-Cloud root (or its import) whose test split was predicted."),
    split: str = typer.Option("test", help="Split to score."),
    report_dir: Optional[Path] = typer.Option(None, help="Where per_scene.csv goes (default PRED's sibling "
                                                         "PRED_scenes/)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the summary as JSON here."),
    masks: Optional[Path] = typer.Option(None, help="Also write the stitched scene masks {scene}.tif here."),
):
    """The 38-Cloud protocol: stitch patches into scenes; precision, recall, specificity, Jaccard, accuracy per
    scene, averaged over scenes."""
    from .scoring import SCENE_METRICS, score_scenes

    rep = score_scenes(pred, data, split, masks_out=masks, progress=True)
    report_dir = report_dir or pred.parent / f"{pred.name}_scenes"
    rep.write(report_dir, json_path)
    if rep.missing:
        typer.echo(f"refused: {len(rep.missing)} non-empty patch(es) have no prediction: {rep.missing[:20]}")
    for msg in rep.invalid[:20]:
        typer.echo(f"invalid: {msg}")
    if not rep.ok:
        _fail(f"incomplete or invalid predictions ({len(rep.missing)} missing, {len(rep.invalid)} invalid)")
    table = rep.per_scene[["scene", "height", "width", *SCENE_METRICS]]
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{100 * v:.2f}"))
    m = rep.means
    typer.echo(f"mean over {len(table)} scenes (%): " + ", ".join(
        f"{k} {100 * v:.2f}" if v is not None else f"{k} -" for k, v in m.items()))
    typer.echo(f"per-scene CSV in {report_dir}")


@app.command()
def demo(
    quick: bool = typer.Option(False, help="Seconds-long variant on a few small chips (used by the tests)."),
    workdir: Optional[Path] = typer.Option(None, help="Where results go (default runs/demo)."),
    data: Optional[Path] = typer.Option(None, help="Where the generated data goes (default data/generated/demo)."),
    force: bool = typer.Option(False, help="Rebuild everything instead of reusing what exists."),
):
    """The main job end to end on generated data: generate, fit, predict, score, print the results table."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if quick else DemoConfig()
    if workdir is not None:
        cfg.workdir = str(workdir)
    if data is not None:
        cfg.data = str(data)
    cfg.force = force
    run_demo(cfg)


if __name__ == "__main__":
    main()
