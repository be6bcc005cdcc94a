"""``cloudkd train`` / ``cloudkd distill``: fit a student with Lightning from one config.

Everything of a run lands in ``out``::

    out/checkpoints/best.ckpt, last.ckpt     Lightning checkpoints (best by val_jaccard; last for --resume)
    out/logs/...                             CSV logs (and TensorBoard when tensorboard/tensorboardX is installed)
    out/student.pt                           the best model's plain state dict (``torch.load`` + load_state_dict)
    out/student.json                         model spec, parameter count, val Jaccard, training config
    out/run.json                             what the run trains (written when training starts), for --resume

Multi-GPU / multi-node runs use Lightning strategies (``devices``, ``num_nodes``, ``strategy="ddp"``); on CPUs
DDP uses the gloo backend. Each rank writes ``out/rank{r}.json`` (its final val Jaccard and a checksum of its
weights) so agreement between ranks can be checked.

``--resume`` continues the run in ``out`` only with what it was started with (:func:`run_identity`, recorded in
``out/run.json``): the data, folds and chips, model, optimisation, loss, teacher, seed, threshold and precision. Only
:data:`RESUMABLE` settings may change: more epochs (the cosine schedule follows the new length) and where and
how the run is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from ..common.errors import DataError
from ..common.io import atomic_write
from ..common.outputs import MARK, check_folder, mark_folder
from ..data.datamodule import CloudDataModule
from .config import RUN_KIND, TrainConfig
from .module import StudentModule
from .teachers import nnunet_teacher_folds, online_teacher_factory, teacher_rule_threshold
from .runs import lightning_state, load_checkpoint
from .teachers import PEER
from ..common.sizes import count_params

__all__ = ["TrainConfig", "FitResult", "EpochLog", "fit", "export_best", "run_identity", "check_resume"]

#: the record of what a run trains, written when it starts and compared by --resume
RUN_JSON = "run.json"
#: TrainConfig fields a resumed run may change: its length and where and how it runs, not what it trains
#: (``allow_teacher_leak`` is covered by the teacher folds used, which are compared)
RESUMABLE = ("out", "epochs", "resume", "progress", "num_workers", "accelerator", "devices", "num_nodes", "strategy",
             "allow_teacher_leak")
#: identity fields added after runs were first recorded, with the value every run recorded without them trained with
_BEFORE = {"precision": "32-true", "kd_on": "all", "gain": 0.0, "gain_min": 0.4, "teacher_rule": False}
#: TrainConfig fields that name files or folders (compared resolved, so runs/data and ./runs/data are one)
_PATHS = ("data", "folds", "exclude", "soft_dir", "teacher_nnunet", "teacher_onnx", "unlabelled")
#: how the command line spells a TrainConfig field where it is not --field-name
_OPTION = {"data": "DATA", "batch_size": "--batch", "limit_train_batches": "--steps", "soft_dir": "--soft",
           "teacher_onnx_output": "--onnx-output", "num_workers": "--workers", "train_chips": "training chips",
           "val_chips": "validation chips"}


@dataclass
class FitResult:
    out: Path
    best_checkpoint: Optional[Path]
    val_jaccard: Optional[float]
    params: int
    seconds: float
    epochs: int


def _weights_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _chips(ids) -> dict:
    ids = sorted(map(str, ids))
    return {"n": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def run_identity(cfg: TrainConfig, dm: CloudDataModule, teacher_folds: Optional[list] = None) -> dict:
    """What a run trains, as JSON: every TrainConfig field but :data:`RESUMABLE` (paths resolved; the nnU-Net
    teacher folds as used, ``teacher_folds``) and the chips of its training and validation split (count and
    digest of their ids, from ``dm.setup_index()``)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE}
    for k in _PATHS:
        if d[k] and not (k == "teacher_onnx" and d[k] == PEER):
            d[k] = str(Path(d[k]).resolve())
    d["teacher_folds"] = teacher_folds if teacher_folds is not None else d["teacher_folds"]
    d["train_chips"], d["val_chips"] = _chips(dm.train_index["chip_id"]), _chips(dm.val_index["chip_id"])
    return json.loads(json.dumps(d))  # as it reads back from run.json


def check_resume(out: Path, identity: dict) -> None:
    """Refuse (DataError naming each changed setting, old -> new) to resume the run in ``out`` with a different
    :func:`run_identity` than ``out/run.json`` recorded, or without such a record."""
    path = out / RUN_JSON
    if not path.is_file():
        raise DataError(f"--resume: {path} is missing, so nothing says what this run was trained with (a run of an "
                        f"older cloudkd?); start it anew with --force")
    try:
        old = {**_BEFORE, **json.loads(path.read_text())["identity"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"--resume: {path}: unreadable ({type(exc).__name__}); start the run anew with --force") \
            from None

    def show(k, v):
        return f"{v['n']} chips" if k.endswith("_chips") and isinstance(v, dict) else repr(v)

    changed = [k for k in list(old) + [k for k in identity if k not in old] if old.get(k) != identity.get(k)]
    if changed:
        what = "; ".join(f"{_OPTION.get(k, '--' + k.replace('_', '-'))} {show(k, old.get(k))} -> "
                         f"{show(k, identity.get(k))}" for k in changed)
        raise DataError(f"--resume: {out} was started with other settings: {what}. Only --epochs and how it runs "
                        f"(--devices, --workers, ...) may change; train a new run elsewhere, or --force to replace it")


class _RecordRun(pl.Callback):
    """Writes ``out/run.json`` once the trainer is set up (under DDP after every process has passed the command
    line's checks of ``out``, which a file written before the processes start would fail)."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record

    def setup(self, trainer, pl_module, stage):
        if trainer.is_global_zero:
            atomic_write(self.path, lambda t: Path(t).write_text(json.dumps(self.record, indent=2)))


class EpochLog(pl.Callback):
    """Gives ``log`` one line per finished training epoch: ``epoch E/N, val Jaccard J (S s)`` (the seconds since
    training started), for callers that train with the progress bar off."""

    def __init__(self, log: Callable[[str], None], epochs: int):
        self.write, self.epochs = log, epochs

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        v = trainer.callback_metrics.get("val_jaccard")
        score = f", val Jaccard {float(v):.4f}" if v is not None else ""
        self.write(f"epoch {trainer.current_epoch + 1}/{self.epochs}{score} ({time.perf_counter() - self.t0:.0f} s)")


def fit(cfg: TrainConfig, into: Optional[os.PathLike | str] = None, callbacks: Sequence = (),
        log: Optional[Callable[[str], None]] = None) -> FitResult:
    """Train the run ``cfg`` describes in ``cfg.out`` (or in ``into``, where the command line builds a run that
    replaces ``cfg.out`` when it has finished; ``cfg.out`` is what student.json records). A new run goes only
    into a new or empty folder or a run folder cloudkd wrote (output policy kind "student-run"), which it marks.
    ``callbacks``: more Lightning callbacks; ``log``: gets one line per finished epoch (:class:`EpochLog`)."""
    if log is not None:
        callbacks = [*callbacks, EpochLog(log, cfg.epochs)]
    mode = cfg.teacher_mode
    if cfg.kd_weight > 0 and mode == "none":
        raise DataError("distillation (kd_weight > 0) needs --soft (offline) or --teacher-nnunet / --teacher-onnx")
    if cfg.kd_on == "unlabelled" and not (cfg.unlabelled and cfg.label_weight > 0 and cfg.kd_weight > 0):
        raise DataError("--kd-on unlabelled distils on the --unlabelled chips alone: it needs --unlabelled, labels "
                        "(--label-weight > 0) and a teacher (--kd-weight > 0)")
    out = Path(into if into is not None else cfg.out)
    if not cfg.resume:
        check_folder(out, RUN_KIND, True, "out")  # never a file, or a folder cloudkd did not write
    last = out / "checkpoints" / "last.ckpt"
    if cfg.resume and not last.is_file():
        raise DataError(f"resume: {last} does not exist; nothing to resume")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = CloudDataModule(cfg.data, cfg.folds, cfg.val_fold, batch_size=cfg.batch_size, crop=cfg.crop,
                         soft_dir=cfg.soft_dir if mode == "offline" else None, unlabelled=cfg.unlabelled,
                         with_labels=cfg.label_weight > 0, num_workers=cfg.num_workers, seed=cfg.seed,
                         exclude=cfg.exclude)
    dm.setup_index()  # the chip tables (and --exclude) checked before anything in ``out`` is touched
    if mode == "offline":
        from ..data.soft import check_soft_folder

        check_soft_folder(cfg.soft_dir)  # label masks (0/1) given as soft labels: one line, before any work
    teacher, factory = None, None  # the online teacher as recorded in student.json, and how to build it
    if cfg.teacher_folds is not None and not cfg.teacher_nnunet:
        raise DataError("--teacher-folds chooses folds of an nnU-Net teacher: give it with --teacher-nnunet")
    if cfg.teacher_rule and not cfg.teacher_nnunet:
        raise DataError("--teacher-rule centres an nnU-Net teacher on its fitted threshold: give it with "
                        "--teacher-nnunet")
    if mode == "online":
        folds = None
        if cfg.teacher_nnunet:
            folds, leaks = nnunet_teacher_folds(cfg.teacher_nnunet, cfg.val_fold, list(dm.val_index["chip_id"]),
                                                cfg.teacher_folds, cfg.allow_teacher_leak)
            for msg in leaks:
                rank_zero_warn(f"--allow-teacher-leak: {msg}; the validation score will flatter the student")
            teacher = {"nnunet": str(Path(cfg.teacher_nnunet).resolve()), "folds": folds, "leak": leaks or None}
            if cfg.teacher_rule:
                teacher["rule_threshold"] = teacher_rule_threshold(cfg.teacher_nnunet, folds)
        factory = online_teacher_factory(cfg.teacher_nnunet, cfg.teacher_onnx, cfg.teacher_onnx_output, folds,
                                         rule_threshold=(teacher or {}).get("rule_threshold"))
    identity = run_identity(cfg, dm, teacher["folds"] if teacher else None)
    if cfg.resume:  # a damaged checkpoint or another run's settings: one line, nothing written
        load_checkpoint(last)
        check_resume(out, identity)
    if not cfg.resume and (out / "checkpoints").is_dir():
        # a new run in this folder: the previous run's checkpoints must not be resumed or versioned beside it
        # (the command line asks for --force before it gets here)
        shutil.rmtree(out / "checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and not (out / MARK).is_file():
        mark_folder(out, RUN_KIND)
    module = StudentModule(cfg.model, label_weight=cfg.label_weight, kd_weight=cfg.kd_weight, kd=cfg.kd,
                           temperature=cfg.temperature, teacher_mode=mode, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           max_epochs=cfg.epochs, cloud_paste=cfg.cloud_paste, boundary_ignore=cfg.boundary_ignore,
                           seed=cfg.seed, threshold=cfg.threshold, kd_on=cfg.kd_on, gain=cfg.gain,
                           gain_min=cfg.gain_min)
    if factory is not None:  # built when fitting starts, on each process's own device (StudentModule.on_fit_start)
        module.teacher_from(factory)
    # one best.ckpt and one last.ckpt, replaced in place: a run folder resumed after being moved or copied would
    # otherwise get last-v1.ckpt beside the old last.ckpt (Lightning cannot tell its own files there), and the
    # next --resume would start from the stale one (a new run removes the old checkpoints above). last.ckpt has its
    # own callback that saves after every epoch: Lightning's save_last only rewrites it in an epoch that also saved
    # a best checkpoint, so an interrupted run would resume from the last epoch that improved
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_jaccard",
                                        mode="max", enable_version_counter=False)
    last_ckpt = pl.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None,
                                             save_top_k=1, enable_version_counter=False)
    loggers = [pl.loggers.CSVLogger(str(out), name="logs")]
    try:
        loggers.append(pl.loggers.TensorBoardLogger(str(out), name="tensorboard"))
    except ModuleNotFoundError:
        pass
    trainer = pl.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices,
                         num_nodes=cfg.num_nodes, strategy=cfg.strategy, precision=cfg.precision, logger=loggers,
                         callbacks=[ckpt, last_ckpt,
                                    _RecordRun(out / RUN_JSON, {"identity": identity, "config": asdict(cfg)}),
                                    pl.callbacks.LearningRateMonitor("epoch"), *callbacks],  # logs "lr" by epoch
                         enable_progress_bar=cfg.progress, enable_model_summary=False, log_every_n_steps=1,
                         limit_train_batches=cfg.limit_train_batches, deterministic=False,
                         use_distributed_sampler=False)  # the data module splits (validation without padding)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if cfg.resume else None)
    seconds = time.perf_counter() - t0

    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    score = float(ckpt.best_model_score) if ckpt.best_model_score is not None else None
    if trainer.world_size > 1:
        final = trainer.callback_metrics.get("val_jaccard")
        atomic_write(out / f"rank{trainer.global_rank}.json", lambda t: Path(t).write_text(json.dumps({
            "rank": trainer.global_rank, "world_size": trainer.world_size,
            "val_jaccard": None if final is None else float(final),
            "weights_sha256": _weights_checksum(module.model)})))
    if trainer.is_global_zero:
        export_best(module, best, out, cfg, score, seconds, excluded=dm.excluded, teacher=teacher)
    return FitResult(out, best, score, count_params(module.model), seconds, trainer.current_epoch)


def export_best(module: StudentModule, best: Optional[Path], out: Path, cfg: TrainConfig,
                score: Optional[float], seconds: float, excluded: Optional[list] = None,
                teacher: Optional[dict] = None) -> None:
    """Write the best weights as a plain state dict + a JSON describing how to rebuild the model (``excluded``:
    the chips left out of training and validation, by ``cfg.exclude`` and fold -1; ``teacher``: the nnU-Net
    teacher's workdir, the folds used and any leak of validation labels accepted with --allow-teacher-leak)."""
    state = module.model.state_dict()
    if best is not None and best.is_file():
        state = lightning_state(best)
    atomic_write(out / "student.pt", lambda t: torch.save(state, t))
    info = {"model": cfg.model, "model_kwargs": {}, "params": count_params(module.model),
            "val_jaccard": score, "val_fold": cfg.val_fold, "train_seconds": round(seconds, 1),
            "teacher_mode": cfg.teacher_mode, "config": asdict(cfg)}
    if teacher:
        info["teacher"] = teacher
    if excluded:
        info["excluded"] = {"n_chips": len(excluded), "chip_ids": list(excluded)}
    atomic_write(out / "student.json", lambda t: Path(t).write_text(json.dumps(info, indent=2)))
