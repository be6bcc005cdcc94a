"""``cloudkd evaluate``: the leaderboard metric on a prediction folder, and every method side by side on labelled
(real) chips."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..common.cli import (at_least, cores, fail, file_output_check, finite, folder_output_check, output_check,
                          model_threshold_option, refuse_incomplete, side, split_option, stage_app)
from .audit import EXCLUDE_ABOVE

app = stage_app("5. Evaluate: leaderboard scoring of predictions, the real-chip benchmark.")


@app.command()
def score(
    pred: Path = typer.Option(..., help="Folder of predicted masks {chip_id}.tif."),
    labels: Path = typer.Option(..., help="Folder of label masks {chip_id}.tif."),
    metadata: Optional[Path] = typer.Option(None, help="Metadata CSV for per-location results "
                                                       "(default: the labels folder's sibling *_metadata.csv)."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV: score one fold only."),
    fold: Optional[int] = typer.Option(None, callback=at_least(0), help="The fold to score (with --folds)."),
    json_path: Optional[Path] = typer.Option(None, "--json", callback=file_output_check, help="Write the summary "
                                                                                              "as JSON here."),
    report_dir: Optional[Path] = typer.Option(None, callback=folder_output_check, help="Where per_chip.csv / "
                                                                                       "per_location.csv go "
                                                                                       "(default: PRED's sibling "
                                                                                       "PRED_score/)."),
    workers: int = typer.Option(2, callback=cores(1), help="Reader threads."),
    force: bool = typer.Option(False, help="Replace a --json file and a report folder cloudkd wrote (nothing else "
                                           "is replaced)."),
):
    """Leaderboard metric: one global Jaccard over all pixels of all chips, plus per-chip / per-location CSVs."""
    from ..common.errors import DataError
    from ..common.outputs import check_folder, file_outputs, output_problem, outputs_apart

    report_dir = report_dir or pred.parent / f"{pred.name}_score"
    for path, want in ((report_dir, "folder"), (report_dir / "per_chip.csv", "file"),
                       (report_dir / "per_location.csv", "file")):  # the default folder too, before any work
        problem = output_problem(path, want)
        if problem:
            raise DataError(problem)
    outputs_apart([report_dir], [pred, labels, metadata, folds_csv])
    check_folder(report_dir, SCORE_REPORT_KIND, force, "--report-dir")  # the default folder too, before any work
    with file_outputs({"--json": json_path}, "score-json", force, inputs=[pred, labels, metadata, folds_csv]):
        _score(pred, labels, metadata, folds_csv, fold, json_path, report_dir, workers, force)


#: the kind of content of a folder of per-chip / per-location CSVs (the output policy's mark)
SCORE_REPORT_KIND = "score-report"
#: the kind of content of a real-chip benchmark's --out folder
REAL_BENCH_KIND = "real-bench"


def _score(pred, labels, metadata, folds_csv, fold, json_path, report_dir, workers, force):
    from ..data.folds import read_folds
    from ..common.metrics import EmptyUnionError
    from ..common.outputs import folder_output
    from .scoring import score_folder

    chips = None
    if fold is not None and folds_csv is None:
        fail("--fold needs --folds (the folds CSV the fold is defined in)", 2)
    if folds_csv is not None:
        if fold is None:
            fail("--folds needs --fold", 2)
        f = read_folds(folds_csv)
        chips = f.loc[f.fold == fold, "chip_id"].tolist()
        if not chips:
            fail(f"{folds_csv}: fold {fold} has no chips", 2)
    try:
        rep = score_folder(pred, labels, chips=chips, metadata=metadata, workers=workers, progress=True)
    except EmptyUnionError as exc:
        fail(f"{exc} (no cloud pixel in any label or prediction)")
    with folder_output(report_dir, SCORE_REPORT_KIND, force, "--report-dir") as build:
        rep.write(build)
    rep.write(None, json_path)
    s = rep.summary()
    if rep.extra:
        typer.echo(f"warning: {len(rep.extra)} extra file(s) not among the expected chips: {rep.extra[:10]}")
    refuse_incomplete(rep, "submission", "chip(s)")
    typer.echo(f"global Jaccard {s['jaccard']:.5f}  (intersection {s['intersection']}, union {s['union']}, "
               f"precision {s['precision']:.4f}, recall {s['recall']:.4f})")
    typer.echo(f"{s['n_chips']} chips in {s['seconds']:.2f} s ({s['chips_per_s']} chips/s); "
               f"per-chip / per-location CSV in {report_dir}")
    if rep.per_location is not None:
        typer.echo(rep.per_location[["location", "n_chips", "jaccard", "precision", "recall"]]
                   .to_string(index=False, float_format=lambda v: f"{v:.4f}"))


@app.command("real-bench")
def real_bench(
    data: Path = typer.Argument(..., help="Labelled chip folder (On Cloud N layout), e.g. "
                                          "../shared/data/real_labelled."),
    out: Path = typer.Option(..., "--out", callback=output_check, help="Folder for predictions, per_chip.csv, "
                                                                       "summary.csv/json, real_chips.png."),
    threshold: Optional[Path] = typer.Option(None, help="A fitted threshold model (threshold.json)."),
    teacher_nnunet: Optional[Path] = typer.Option(None, help="A trained nnU-Net teacher workdir."),
    student: List[Path] = typer.Option([], help="Student run folder(s) (cloudkd train/distill); repeatable."),
    onnx: List[Path] = typer.Option([], help="Exported ONNX model(s) (cloudkd export); repeatable."),
    peer: str = typer.Option("auto", help="The pretrained ukis-csmask peer: auto (when installed), yes, no."),
    split: Optional[str] = split_option(),
    force: bool = typer.Option(False, help="Replace a real-chip benchmark cloudkd wrote at OUT (nothing else is "
                                           "replaced)."),
):
    """Score every given model side by side on labelled (real) chips with the leaderboard metric."""
    from ..common.outputs import check_folder, folder_output, outputs_apart
    from ..teacher import peer as peer_mod
    from .realchips import nnunet_method, onnx_method, peer_method, run_real_bench, student_method, threshold_method

    if peer not in ("auto", "yes", "no"):
        fail(f"--peer must be auto, yes or no, got {peer!r}", 2)
    # the output policy, before any model is loaded: apart from the data and the models, new or cloudkd's own
    outputs_apart([out], [data, threshold, teacher_nnunet, *student, *onnx])
    check_folder(out, REAL_BENCH_KIND, force, "--out")
    methods = [threshold_method(threshold)] if threshold else []
    if teacher_nnunet:
        methods.append(nnunet_method(teacher_nnunet))
    methods += [student_method(r) for r in student] + [onnx_method(f) for f in onnx]
    if peer == "yes" or (peer == "auto" and peer_mod.available()):
        methods.append(peer_method())
    elif peer == "auto":
        typer.echo(f"(the pretrained peer is not installed; {peer_mod.INSTALL} adds it)")
    with folder_output(out, REAL_BENCH_KIND, force, "--out") as build:  # built beside OUT, swapped in at the end
        r = run_real_bench(data, methods, build, split=split)
    from ..common.cli import format_table

    typer.echo(format_table(r.rows, list(r.summary.columns)))
    typer.echo("recall of the labelled cloud / precision of the predicted cloud by mean visible reflectance:")
    table = []
    for method, rows in r.bands[r.bands["method"] != "label"].groupby("method", sort=False):
        table.append({"method": method, **{f"R {b}": round(v, 3) for b, v in zip(rows["band"], rows["recall"])},
                      **{f"P {b}": round(v, 3) for b, v in zip(rows["band"], rows["precision"])}})
    typer.echo(format_table(table, list(table[0])))
    typer.echo(f"-> {out / 'summary.csv'}, {out / 'per_chip.csv'}, {out / 'bands.csv'}, {out / Path(r.figure).name}")


@app.command("audit")
def audit(
    data: Path = typer.Argument(..., help="Dataset root (On Cloud N layout or a 38-Cloud root) whose labelled "
                                          "split is audited, or a *_features folder."),
    out: Path = typer.Option(..., "--out", callback=folder_output_check, help="Folder for audit.csv and audit.png "
                                                                              "(and, with --train, the fold "
                                                                              "students in OUT/oof)."),
    model: Optional[Path] = typer.Option(None, help="The judge: a student run folder (cloudkd train/distill), its "
                                                    "student.pt / a .ckpt, or an .onnx model."),
    teacher_nnunet: Optional[Path] = typer.Option(None, help="The judge: a trained nnU-Net teacher workdir."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Out of fold (with --train): one student per "
                                                                   "fold of this CSV, trained without it, judges it."),
    train: bool = typer.Option(False, "--train", help="Train the out-of-fold students (needs --folds)."),
    student_model: str = typer.Option("unet-s", "--student-model", help="Model of the out-of-fold students."),
    epochs: int = typer.Option(10, callback=at_least(1), help="Out-of-fold students: epochs."),
    batch: int = typer.Option(8, callback=at_least(1), help="Out-of-fold students: batch size; also the "
                                                            "prediction batch."),
    crop: int = typer.Option(256, callback=side(32), help="Out-of-fold students: training crop."),
    steps: Optional[int] = typer.Option(None, callback=at_least(1), help="Out-of-fold students: steps per epoch "
                                                                         "(default: one pass)."),
    seed: int = typer.Option(0, callback=at_least(0), help="Out-of-fold students: seed."),
    top: int = typer.Option(16, callback=at_least(1), help="Chips on the contact sheet audit.png."),
    exclude_out: Optional[Path] = typer.Option(None, callback=output_check,
                                               help="Write the ids of chips with suspicion above --above here (one "
                                                    "per line), for --exclude."),
    above: float = typer.Option(EXCLUDE_ABOVE, callback=finite(0.0, 1.0),
                                help="Suspicion above which --exclude-out lists a chip (a fifth of its pixels "
                                     "confidently wrong)."),
    threshold: Optional[float] = model_threshold_option("Cloud probability threshold of the judge's masks "
                                                        "(default: the one the judge recorded: a student run's "
                                                        "training threshold, an exported model's; --train: the "
                                                        "students' training threshold)."),
    split: Optional[str] = split_option(),
    force: bool = typer.Option(False, help="Replace an audit cloudkd wrote in --out (its fold students are reused "
                                           "when they still fit), and an --exclude-out file cloudkd wrote (nothing "
                                           "else is replaced)."),
):
    """Rank every labelled chip by how likely its label is wrong (audit.csv), show the worst (audit.png)."""
    if train and folds_csv is None:
        fail("--train needs --folds (the location-grouped folds the out-of-fold students are trained on)", 2)
    if folds_csv is not None and not train:
        fail("--folds is the out-of-fold mode: add --train (or leave --folds out to audit with --model)", 2)
    if train and (model is not None or teacher_nnunet is not None):
        fail("--train trains its own students: leave out --model / --teacher-nnunet", 2)
    if not train and (model is None) == (teacher_nnunet is None):
        fail("give one judge: --model RUN (a student run folder or an .onnx file), --teacher-nnunet WORKDIR, or "
             "--folds FOLDS --train", 2)
    import os
    from contextlib import nullcontext

    from ..common.outputs import check_file, check_folder, folder_lock, outputs_apart

    # the output policy: outputs apart from the data, the judges and each other; --out new, empty or an audit
    # cloudkd wrote (with --force); --exclude-out a new file or one cloudkd wrote
    outputs_apart([out, exclude_out], [data, model, teacher_nnunet, folds_csv])
    if exclude_out is not None and os.path.realpath(exclude_out) == os.path.realpath(out):
        fail(f"--exclude-out {exclude_out} is --out; give it a file name (e.g. {out / 'exclude.txt'})", 2)
    check_folder(out, AUDIT_KIND, force, "--out")
    if exclude_out is not None:
        check_file(exclude_out, force, "--exclude-out")
    # --train: the fold students are trained into OUT/oof and reused by a later --force, so OUT is claimed (locked
    # and marked) before they train and its audit.png / audit.csv replaced at the end; with a judge, the audit is
    # built beside OUT and swapped in when it is complete
    with folder_lock(out) if train else nullcontext():
        _audit(data, out, model, teacher_nnunet, folds_csv, train, student_model, epochs, batch, crop, steps, seed,
               top, exclude_out, above, threshold, split, force)


#: the kind of content of an audit's --out folder (the output policy's mark)
AUDIT_KIND = "label-audit"


def _audit(data, out, model, teacher_nnunet, folds_csv, train, student_model, epochs, batch, crop, steps, seed,
           top, exclude_out, above, threshold, split, force):
    import time
    from contextlib import nullcontext

    from ..common.io import atomic_write
    from ..common.outputs import check_folder, folder_output, mark_folder, record_file
    from ..data.chips import load_index
    from ..data.roots import resolve_split
    from . import audit as A

    sp = resolve_split(data, split or ("train" if not str(data).endswith("_features") else None))
    index = load_index(sp, require_labels=True)
    if index.empty:
        fail(f"{sp.features_dir}: no chips to audit", 2)
    t0 = time.perf_counter()
    if train:
        from ..data.folds import read_folds
        from ..student.config import TrainConfig

        folds = read_folds(folds_csv)
        missing = sorted(set(index["chip_id"]) - set(folds["chip_id"]))
        if missing:
            fail(f"{folds_csv}: {len(missing)} chip(s) of {sp.features_dir} have no fold, e.g. {missing[:5]}", 2)
        if threshold is None:
            threshold = TrainConfig.threshold  # what the out-of-fold students train (and so record) by default
        base = TrainConfig(data=str(sp.root), out="", model=student_model, epochs=epochs, batch_size=batch,
                           crop=crop, limit_train_batches=steps, seed=seed, threshold=threshold)
        check_folder(out, AUDIT_KIND, force, "--out")  # again, under the lock
        mark_folder(out, AUDIT_KIND)
        runs = A.train_fold_models(sp.root, folds_csv, out / "oof", base, log=typer.echo)
        models = {k: A.load_model(r) for k, r in runs.items()}
        source = f"out of fold, {len(models)} {student_model} students"
        t0 = time.perf_counter()  # chips/s counts the audit, not the training
        rows = A.audit_out_of_fold(index, folds, models, threshold, batch)
        judge = next(iter(models.values()))
    else:
        judge = A.load_model(model, teacher_nnunet)
        if threshold is None:
            from ..common.infer import DEFAULT_THRESHOLD
            from ..student.runs import recorded_threshold

            threshold = recorded_threshold(model) if model is not None else DEFAULT_THRESHOLD  # the teacher: none
        models, source = None, judge.name
        rows = A.audit_chips(index, judge, threshold, batch)
    seconds = time.perf_counter() - t0
    table = A.rank(rows)
    with nullcontext(out) if train else folder_output(out, AUDIT_KIND, force, "--out") as build:
        A.contact_sheet(table, index, judge, build / "audit.png", top=top, threshold=threshold,
                        models_by_fold=models)
        atomic_write(build / "audit.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.5g"))
    sheet = out / "audit.png"
    typer.echo(f"audited {len(table)} chips of {sp.features_dir} with {source}: {len(table) / seconds:.1f} chips/s")
    typer.echo(table.head(min(10, len(table)))[["rank", "chip_id", "location", "suspicion", "label_iou",
                                                 "label_fraction", "pred_fraction"]]
               .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if exclude_out is not None:
        n = A.write_exclude(table, exclude_out, above, source)
        record_file(exclude_out, "exclude-list")
        typer.echo(f"-> {exclude_out}: {n} chip(s) with suspicion > {above}")
    typer.echo(f"-> {out / 'audit.csv'}, {sheet}")
