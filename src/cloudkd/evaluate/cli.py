"""``cloudkd evaluate``: the leaderboard metric on a prediction folder, and every method side by side on labelled
(real) chips."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..common.cli import at_least, fail, output_check, refuse_incomplete, split_option, stage_app

app = stage_app("5. Evaluate: leaderboard scoring of predictions, the real-chip benchmark.")


@app.command()
def score(
    pred: Path = typer.Option(..., help="Folder of predicted masks {chip_id}.tif."),
    labels: Path = typer.Option(..., help="Folder of label masks {chip_id}.tif."),
    metadata: Optional[Path] = typer.Option(None, help="Metadata CSV for per-location results "
                                                       "(default: the labels folder's sibling *_metadata.csv)."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV: score one fold only."),
    fold: Optional[int] = typer.Option(None, callback=at_least(0), help="The fold to score (with --folds)."),
    json_path: Optional[Path] = typer.Option(None, "--json", callback=output_check, help="Write the summary as JSON "
                                                                                         "here."),
    report_dir: Optional[Path] = typer.Option(None, callback=output_check, help="Where per_chip.csv / "
                                                                                "per_location.csv go "
                                                         "(default: PRED's sibling PRED_score/)."),
    workers: int = typer.Option(2, callback=at_least(1), help="Reader threads."),
):
    """Leaderboard metric: one global Jaccard over all pixels of all chips, plus per-chip / per-location CSVs."""
    from ..data.folds import read_folds
    from ..common.metrics import EmptyUnionError
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
    report_dir = report_dir or pred.parent / f"{pred.name}_score"
    rep.write(report_dir, json_path)
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
):
    """Score every given model side by side on labelled (real) chips with the leaderboard metric."""
    from ..teacher import peer as peer_mod
    from .realchips import nnunet_method, onnx_method, peer_method, run_real_bench, student_method, threshold_method

    if peer not in ("auto", "yes", "no"):
        fail(f"--peer must be auto, yes or no, got {peer!r}", 2)
    methods = [threshold_method(threshold)] if threshold else []
    if teacher_nnunet:
        methods.append(nnunet_method(teacher_nnunet))
    methods += [student_method(r) for r in student] + [onnx_method(f) for f in onnx]
    if peer == "yes" or (peer == "auto" and peer_mod.available()):
        methods.append(peer_method())
    elif peer == "auto":
        typer.echo(f"(the pretrained peer is not installed; {peer_mod.INSTALL} adds it)")
    r = run_real_bench(data, methods, out, split=split)
    from ..common.cli import format_table

    typer.echo(format_table(r.rows, list(r.summary.columns)))
    typer.echo(f"-> {out / 'summary.csv'}, {out / 'per_chip.csv'}, {r.figure}")
