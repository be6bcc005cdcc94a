"""``cloudkd student``: the compact students: presets, training with labels and KD, prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..common.cli import (MAX_DILATE, check_memory, cores, exclude_option, fail, finite, folder_output_check,
                          model_dilate_option, model_threshold_option, output_check, side, split_option, stage_app,
                          threshold_option)
from .config import DISTILL_KD_WEIGHT, PRECISION_CHOICES, RUN_KIND, TrainConfig as C, lightning_precision
from .rule import DEFAULT_MAX_DILATE

#: unet-s training memory per pixel of batch x crop^2 (forward + backward; measured 830-990 B/px)
TRAIN_BYTES_PER_PIXEL = 1000

app = stage_app("4. Student: presets, train (labels), distill (labels + teacher), predict.")


@app.command("list")
def student_list(as_json: bool = typer.Option(False, "--json", help="Print {preset: params} as JSON.")):
    """Student presets and their parameter counts (4 bands in, 1 cloud logit out)."""
    import json as _json

    from ..teacher.plans import NNUNET_2D_PARAMS
    from .models import list_presets
    from .unet import PRESETS

    presets = list_presets()
    if as_json:
        typer.echo(_json.dumps(presets))
        return
    for name, n in presets.items():
        typer.echo(f"{name:8s} {n:>9,d} params  widths {PRESETS[name]['widths']}  ({NNUNET_2D_PARAMS / n:.0f}x smaller "
                   f"than nnU-Net's {NNUNET_2D_PARAMS / 1e6:.1f} M 2d plan)")


#: set for the processes Lightning starts for DDP (they run this command again): the folder the run is built in
BUILD_ENV = "CLOUDKD_STUDENT_RUN_BUILD"


def run_folder(out: Path, resume: bool, force: bool) -> str:
    """A run folder is new, resumed (--resume: its last checkpoint must exist; ``fit`` checks that it is readable
    and that the run's settings did not change) or replaced (--force, only a run folder cloudkd wrote); never
    silently overwritten, which would also leave the old run's checkpoint for a later --resume. Returns
    "resume", or the output policy's state of ``out``: "new", "empty" or "replace"."""
    from ..common.outputs import check_folder
    from .runs import interrupted, interrupted_message

    if resume and force:
        fail("--resume continues the run in OUT and --force replaces it: give one", 2)
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            fail(f"--resume: {last} does not exist; nothing to resume (drop --resume to start a run)", 2)
        return "resume"
    state = check_folder(out, RUN_KIND, True, "--out")  # a file, or a folder cloudkd did not write: refused
    if not force and interrupted(out):
        fail(interrupted_message(out), 2)
    if state == "replace" and not force:
        fail(f"{out}: already holds a run (or other files); --resume continues it, --force replaces it", 2)
    return state


def accelerator_problem(accelerator: str) -> Optional[str]:
    """None when Lightning's ``--accelerator`` exists on this machine, else what is wrong."""
    import torch

    a = accelerator.lower()
    if a in ("auto", "cpu"):
        return None
    if a in ("gpu", "cuda"):
        return None if torch.cuda.is_available() else f"{accelerator!r}: this machine has no CUDA GPU (use cpu)"
    if a == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else f"{accelerator!r}: this machine has no MPS device"
    return f"{accelerator!r} is not an accelerator: use auto, cpu or gpu"


def _fit(data: Path, out: Path, model: str, folds_csv: Optional[Path], val_fold: int, epochs: int, batch: int,
         crop: int, lr: float, label_weight: float, kd_weight: float, kd: str, temperature: float,
         soft: Optional[Path], teacher_nnunet: Optional[Path], teacher_onnx: Optional[Path], onnx_output: str,
         unlabelled: Optional[Path], steps: Optional[int], accelerator: str, devices: int, num_nodes: int,
         strategy: str, workers: int, seed: int, resume: bool, cloud_paste: float, boundary_ignore: int,
         threshold: float, force: bool, exclude: Optional[Path] = None, teacher_folds: Optional[list] = None,
         allow_teacher_leak: bool = False, precision: str = C.precision, kd_on: str = C.kd_on,
         gain: float = C.gain, gain_min: float = C.gain_min, teacher_rule: bool = C.teacher_rule):
    import os

    from ..common.outputs import folder_lock, outputs_apart, remove_tree, replace_on_success
    from .teachers import PEER
    from .train import fit

    # training memory of unet-s, per pixel of batch x crop^2 (measured: 830-990 B/px); wider models need more
    check_memory(TRAIN_BYTES_PER_PIXEL * batch * crop * crop, f"training with --batch {batch} --crop {crop}")
    problem = accelerator_problem(accelerator)
    if problem:
        fail(f"--accelerator {problem}", 2)
    import torch

    if accelerator.lower() in ("gpu", "cuda") and devices > torch.cuda.device_count():
        fail(f"--devices {devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s)", 2)
    cfg = C(data=str(data), out=str(out), model=model, folds=str(folds_csv) if folds_csv else None,
                      val_fold=val_fold, epochs=epochs, batch_size=batch, crop=crop, lr=lr,
                      label_weight=label_weight, kd_weight=kd_weight, kd=kd, temperature=temperature,
                      soft_dir=str(soft) if soft else None, teacher_nnunet=str(teacher_nnunet) if teacher_nnunet
                      else None, teacher_onnx=str(teacher_onnx) if teacher_onnx else None,
                      teacher_onnx_output=onnx_output, unlabelled=str(unlabelled) if unlabelled else None,
                      limit_train_batches=steps, accelerator=accelerator, precision=precision, devices=devices,
                      num_nodes=num_nodes,
                      strategy=strategy, num_workers=workers, seed=seed, resume=resume, cloud_paste=cloud_paste,
                      boundary_ignore=boundary_ignore, threshold=threshold, kd_on=kd_on, gain=gain,
                      gain_min=gain_min,
                      exclude=str(exclude) if exclude else None, teacher_folds=teacher_folds,
                      allow_teacher_leak=allow_teacher_leak, teacher_rule=teacher_rule)
    build = os.environ.get(BUILD_ENV)
    try:
        if build and os.environ.get("LOCAL_RANK") not in (None, "0"):
            # a DDP process Lightning started: the first process checked and locked OUT and builds the run here
            fit(cfg, into=build)
            return
        outputs_apart([out], [data, folds_csv, exclude, soft, unlabelled, teacher_nnunet,
                              None if teacher_onnx is None or str(teacher_onnx) == PEER else teacher_onnx])
        run_folder(out, resume, force)  # refusals before anything is written (the lock file included)
        with folder_lock(out):  # a second training into OUT is refused while this one runs
            state = run_folder(out, resume, force)
            if state == "replace":  # the old run stays until the new one has finished (build beside, then swap)
                with replace_on_success(out) as into:
                    r = _fit_into(fit, cfg, into)
            else:
                try:
                    r = _fit_into(fit, cfg, out)
                except Exception:  # a failed new run leaves nothing, unless a checkpoint --resume can continue
                    if state != "resume" and not (out / "checkpoints" / "last.ckpt").is_file():
                        for sub in out.iterdir() if out.is_dir() else ():
                            remove_tree(sub)
                        if state == "new":
                            remove_tree(out)
                    raise
    except ValueError as exc:
        fail(str(exc), 2)
    if r.val_jaccard is not None:
        typer.echo(f"{model}: {r.params:,} params; best val global Jaccard {r.val_jaccard:.4f} (fold {val_fold}); "
                   f"{r.seconds:.0f} s; -> {out / 'student.pt'}")


def _fit_into(fit, cfg, into: Path):
    """``fit(cfg)`` writing into ``into``, which the processes Lightning starts for DDP learn from BUILD_ENV."""
    import os

    os.environ[BUILD_ENV] = str(Path(into).absolute())
    try:
        return fit(cfg, into=into)
    finally:
        os.environ.pop(BUILD_ENV, None)


def _precision(value: str) -> str:
    """``--precision``: Lightning's name of the precision given (``config.lightning_precision``)."""
    try:
        return lightning_precision(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _kd_on(value: str) -> str:
    """``--kd-on``: one of :data:`cloudkd.student.distill.KD_ON`."""
    from .distill import KD_ON

    if value not in KD_ON:
        raise typer.BadParameter(f"{value!r}: choose one of {', '.join(KD_ON)}")
    return value


def _fold_list(value: Optional[str]) -> Optional[list]:
    """``--teacher-folds 0,2`` -> [0, 2]."""
    if value is None:
        return None
    try:
        folds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        folds = []
    if not folds or min(folds) < 0:
        raise typer.BadParameter(f"expected fold numbers >= 0 separated by commas, e.g. 0 or 0,1, got {value!r}")
    return folds


_DATA = typer.Argument(..., help="Labelled dataset root (train split, On Cloud N layout).")
_OUT = typer.Option(..., "--out", callback=folder_output_check, help="Run folder (checkpoints, logs, student.pt, "
                                                                     "student.json).")
_FOLDS = typer.Option(None, "--folds", help="Folds CSV (default: location folds made from the data).")
_EXCLUDE = exclude_option()


def _train_options(distill: bool):
    """The shared options of 'train' and 'distill' (they differ in the defaults of the loss weights)."""
    return dict(
        model=typer.Option(C.model, help="Preset (cloudkd student list), unet:W1-W2-..., or smp:Arch:encoder."),
        val_fold=typer.Option(C.val_fold, min=0, help="Validation fold (whole locations)."),
        epochs=typer.Option(C.epochs, min=1, help="Epochs."),
        batch=typer.Option(C.batch_size, min=1, help="Batch size per device."),
        crop=typer.Option(C.crop, callback=side(32, multiple=16), help="Random crop size for training."),
        lr=typer.Option(C.lr, callback=finite(0.0, open_low=True), help="AdamW learning rate (cosine schedule)."),
        label_weight=typer.Option(C.label_weight, callback=finite(0.0), help="Weight of BCE + Dice on labels (0: "
                                                                             "distil without labels)."),
        kd_weight=typer.Option(DISTILL_KD_WEIGHT if distill else C.kd_weight, callback=finite(0.0),
                               help="Weight of the distillation loss."),
        kd=typer.Option(C.kd, help="Distillation loss: pixel (temperature KL per pixel) or cwd "
                                      "(channel-wise spatial distribution)."),
        temperature=typer.Option(C.temperature, callback=finite(0.0, open_low=True), help="Distillation "
                                                                                          "temperature."),
        soft=typer.Option(None, help="Offline teacher: folder of soft labels for the training chips (and the "
                                     "--unlabelled chips)."),
        teacher_nnunet=typer.Option(None, help="Online teacher: a trained nnU-Net workdir (cloudkd teacher)."),
        teacher_folds=typer.Option(None, "--teacher-folds", callback=_fold_list,
                                   help="The nnU-Net teacher's folds to ensemble, e.g. 0,1 (default: the student's "
                                        "--val-fold; any other was trained on the validation chips, see "
                                        "--allow-teacher-leak)."),
        allow_teacher_leak=typer.Option(False, "--allow-teacher-leak",
                                        help="Accept --teacher-folds that were trained on the student's validation "
                                             "chips (a warning, recorded in student.json; the validation score "
                                             "then flatters the student)."),
        teacher_rule=typer.Option(C.teacher_rule, "--teacher-rule/--teacher-raw",
                                  help="Distil the nnU-Net teacher's decision: its logits shifted by the threshold "
                                       "'teacher fit-threshold' recorded for its folds, so that 0.5 is its rule "
                                       "(--teacher-raw: its logits as they are)."),
        teacher_onnx=typer.Option(None, help="Online teacher: any ONNX segmentation model (normalised input)."),
        onnx_output=typer.Option(C.teacher_onnx_output, help="What the ONNX teacher outputs: logits or "
                                                             "probabilities."),
        unlabelled=typer.Option(None, help="Extra chips without labels to distil on: a *_features folder or a "
                                           "dataset root (its unlabelled_features/, from synth "
                                           "--n-unlabelled). The teacher's loss covers every chip, the "
                                           "labels' loss the labelled ones."),
        steps=typer.Option(None, min=1, help="Training steps per epoch (default: one pass over the "
                                                            "chips)."),
        accelerator=typer.Option(C.accelerator, help="auto, cpu, gpu."),
        precision=typer.Option(C.precision, callback=_precision,
                               help=f"Lightning's training precision: {PRECISION_CHOICES}. Recorded with the run "
                                    "(--resume refuses another)."),
        devices=typer.Option(C.devices, min=1, help="Devices (processes) per node."),
        num_nodes=typer.Option(C.num_nodes, min=1, help="Nodes."),
        strategy=typer.Option(C.strategy, help="Lightning strategy, e.g. ddp."),
        workers=typer.Option(C.num_workers, callback=cores(0), help="Data loader workers."),
        seed=typer.Option(C.seed, min=0, help="Random seed."),
        resume=typer.Option(C.resume, help="Resume the run in OUT from OUT/checkpoints/last.ckpt."),
        force=typer.Option(False, help="Replace the run already in OUT (a run folder cloudkd wrote): the new run is "
                                       "built beside it and swapped in when it has finished."),
        cloud_paste=typer.Option(C.cloud_paste, callback=finite(0.0, 1.0), help="Cloud paste: probability that a "
                                                                                "low-cover chip of a batch receives a "
                                           "cloudy batch-mate's labelled cloud (0 = off)."),
        threshold=threshold_option("Cloud probability threshold of the prediction rule: validation (and so the "
                                   "best checkpoint) scores at it, and 'pack' ships it by default."),
        boundary_ignore=typer.Option(C.boundary_ignore, min=0,
                                     help="Boundary-tolerant loss: px on both sides of label outlines left out of "
                                          "BCE + Dice (0 = off)."),
        kd_on=typer.Option(C.kd_on, "--kd-on", callback=_kd_on,
                           help="The chips the KD loss covers: all, or unlabelled (only the --unlabelled chips: a "
                                "teacher that did not learn these labels, e.g. the peer on real images, teaches "
                                "those, the labels the rest)."),
        gain=typer.Option(C.gain, callback=finite(0.0, 1.0),
                          help="Gain randomisation: share of the training chips darkened by a gain drawn "
                               "log-uniformly from [--gain-min, 1], labels unchanged (0 = off)."),
        gain_min=typer.Option(C.gain_min, "--gain-min", callback=finite(0.05, 1.0),
                              help="The darkest gain of --gain (default: real / generated clear-ground brightness, "
                                   "measured)."),
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
          teacher_folds: Optional[str] = _T["teacher_folds"], allow_teacher_leak: bool = _T["allow_teacher_leak"],
          teacher_rule: bool = _T["teacher_rule"],
          onnx_output: str = _T["onnx_output"], unlabelled: Optional[Path] = _T["unlabelled"],
          steps: Optional[int] = _T["steps"], accelerator: str = _T["accelerator"],
          precision: str = _T["precision"], devices: int = _T["devices"],
          num_nodes: int = _T["num_nodes"], strategy: str = _T["strategy"], workers: int = _T["workers"],
          seed: int = _T["seed"], resume: bool = _T["resume"], force: bool = _T["force"],
          cloud_paste: float = _T["cloud_paste"], boundary_ignore: int = _T["boundary_ignore"],
          kd_on: str = _T["kd_on"], gain: float = _T["gain"], gain_min: float = _T["gain_min"],
          threshold: float = _T["threshold"], exclude: Optional[Path] = _EXCLUDE):
    """Train a student or any smp model on labels (add a teacher to distil; see 'distill')."""
    _fit(**locals())


@app.command()
def distill(data: Path = _DATA, out: Path = _OUT, folds_csv: Optional[Path] = _FOLDS,
            model: str = _D["model"], val_fold: int = _D["val_fold"], epochs: int = _D["epochs"],
            batch: int = _D["batch"], crop: int = _D["crop"], lr: float = _D["lr"],
            label_weight: float = _D["label_weight"], kd_weight: float = _D["kd_weight"], kd: str = _D["kd"],
            temperature: float = _D["temperature"], soft: Optional[Path] = _D["soft"],
            teacher_nnunet: Optional[Path] = _D["teacher_nnunet"], teacher_onnx: Optional[Path] = _D["teacher_onnx"],
            teacher_folds: Optional[str] = _D["teacher_folds"], allow_teacher_leak: bool = _D["allow_teacher_leak"],
            teacher_rule: bool = _D["teacher_rule"],
            onnx_output: str = _D["onnx_output"], unlabelled: Optional[Path] = _D["unlabelled"],
            steps: Optional[int] = _D["steps"], accelerator: str = _D["accelerator"],
            precision: str = _D["precision"], devices: int = _D["devices"],
            num_nodes: int = _D["num_nodes"], strategy: str = _D["strategy"], workers: int = _D["workers"],
            seed: int = _D["seed"], resume: bool = _D["resume"], force: bool = _D["force"],
            cloud_paste: float = _D["cloud_paste"], boundary_ignore: int = _D["boundary_ignore"],
            kd_on: str = _D["kd_on"], gain: float = _D["gain"], gain_min: float = _D["gain_min"],
            threshold: float = _D["threshold"], exclude: Optional[Path] = _EXCLUDE):
    """Distil a teacher into a student: offline (--soft) or online (--teacher-nnunet / --teacher-onnx)."""
    if not (soft or teacher_nnunet or teacher_onnx):
        fail("distill needs a teacher: --soft DIR (offline) or --teacher-nnunet WORKDIR / --teacher-onnx FILE", 2)
    _fit(**locals())


@app.command()
def predict(
    model: Path = typer.Option(..., help="A student run folder (student.json + student.pt)."),
    features: Path = typer.Option(..., help="A *_features folder (or dataset root)."),
    out: Path = typer.Option(..., "--out", callback=output_check, help="Folder for the masks {chip_id}.tif "
                                                                       "(submission format)."),
    batch: int = typer.Option(8, min=1, help="Chips per batch."),
    tta: bool = typer.Option(False, help="Average logits over flips."),
    threshold: Optional[float] = model_threshold_option(),
    dilate: Optional[int] = model_dilate_option(),
    split_name: Optional[str] = split_option(),
    force: bool = typer.Option(False, help="Replace the masks of another model already in OUT."),
):
    """Masks for a folder of chips from a trained student."""
    from ..common.outputs import masks_output, model_fingerprint, outputs_apart
    from ..data.roots import resolve_split
    from .predict import predict_folder
    from .runs import load_student, recorded_rule

    outputs_apart([out], [features, model])  # never among the chips (a features folder has no record) or the run
    net, feats = load_student(model), resolve_split(features, split_name).features_dir
    rule = recorded_rule(model)
    threshold = rule[0] if threshold is None else threshold
    dilate = rule[1] if dilate is None else dilate
    outputs_apart([out], [feats])
    with masks_output(out, f"student {model.resolve()} (threshold {threshold}, dilate {dilate}, tta {tta})", force,
                      model_fingerprint(network=net)) as into:  # a run retrained in place is another producer
        r = predict_folder(net, feats, into, batch_size=batch, tta=tta, threshold=threshold, dilate=dilate)
    typer.echo(f"{r['n_chips']} masks -> {out}; {r['ms_per_chip']:.1f} ms/chip model, "
               f"{r['wall_ms_per_chip']:.1f} ms/chip with I/O")


@app.command("fit-rule")
def fit_rule_cmd(
    run: Path = typer.Argument(..., help="A student run folder (student.json + student.pt)."),
    max_dilate: int = typer.Option(DEFAULT_MAX_DILATE, "--max-dilate", min=0, max=MAX_DILATE,
                                   help="The largest dilation tried (pixels); every one from 0 is scored. Default: "
                                        "the annotator model's median margin."),
    threshold: Optional[float] = model_threshold_option("Fit only the dilation, at this cloud probability threshold "
                                                        "(default: fit the threshold too, 0.05 .. 0.95)."),
    batch: int = typer.Option(8, min=1, help="Chips per batch."),
):
    """Fit the prediction rule (threshold and dilation) on the run's own validation chips (the generated validation
    fold it trained with) and record it in its student.json: every command that makes masks from the run applies
    it."""
    from .rule import fit_rule

    fit = fit_rule(run, max_dilate, threshold, batch)
    typer.echo(f"validation global Jaccard of {fit.n_chips} chips, by dilation, at the fitted threshold "
               f"{fit.threshold:g}:")
    for d, j in fit.by_dilation().items():
        typer.echo(f"  {d:>3d} px  {j:.4f}{'  <- chosen' if d == fit.dilate else ''}")
    typer.echo(f"rule of {fit.run}: threshold {fit.threshold:g}, dilate {fit.dilate} px; validation Jaccard "
               f"{fit.before:.4f} (threshold {fit.base:g}, undilated) -> {fit.after:.4f} "
               f"(recorded in {fit.run / 'student.json'})")
