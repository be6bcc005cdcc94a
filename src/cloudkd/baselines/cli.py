"""``cloudkd baseline``: classic methods, the first rows of every results table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..common.cli import at_least, exclude_option, fail, output_check, split_option, stage_app

app = stage_app("2. Baselines: classic brightness/whiteness thresholding.")
threshold_app = stage_app("Classic brightness/whiteness thresholding.")
app.add_typer(threshold_app, name="threshold")


@threshold_app.command("fit")
def threshold_fit(
    data: Path = typer.Argument(..., help="Dataset root or train_features folder (with labels)."),
    out: Path = typer.Option(..., "--out", callback=output_check, help="JSON to write the fitted thresholds to."),
    folds_csv: Optional[Path] = typer.Option(None, "--folds", help="Folds CSV: fit without the validation fold."),
    val_fold: Optional[int] = typer.Option(None, callback=at_least(0), help="Fold to leave out of the fit (with "
                                                                            "--folds)."),
    stride: int = typer.Option(4, callback=at_least(1), help="Pixel subsampling stride for the fit."),
    exclude: Optional[Path] = exclude_option(),
    force: bool = typer.Option(False, help="Replace a thresholds JSON cloudkd wrote (nothing else is replaced)."),
):
    """Fit brightness/whiteness thresholds on training chips to maximise the global Jaccard."""
    from ..common.outputs import file_outputs
    from .threshold import fit_threshold
    from ..data.chips import load_index
    from ..data.roots import resolve_split
    from ..data.exclude import exclude_ids, exclude_message
    from ..data.folds import folds_exclusion_line, read_folds, split_by_fold, training_split

    if val_fold is not None and folds_csv is None:
        fail("--val-fold needs --folds (the folds CSV the fold is defined in)", 2)
    if folds_csv is not None and val_fold is None:
        fail("--folds needs --val-fold", 2)
    split = resolve_split(data, "train")
    idx = load_index(split, require_labels=True)
    ids = []
    if exclude is not None:
        ids = exclude_ids(idx, exclude, split.features_dir)
        typer.echo(exclude_message(len(ids), len(idx), exclude))
    if folds_csv is not None:
        given = read_folds(folds_csv)
        line = folds_exclusion_line(idx, given, ids, folds_csv)
        if line:
            typer.echo(line)
        # the one split: the given folds, the excluded chips then fold -1 (no other chip moves)
        idx, _ = split_by_fold(idx, training_split(idx, given, ids, source=str(folds_csv)), val_fold)
    else:
        idx = idx[~idx["chip_id"].isin(set(ids))].reset_index(drop=True)
    with file_outputs({"--out": out}, "thresholds", force, inputs=[data, folds_csv, exclude]):
        model = fit_threshold(idx["features"], idx["label"], stride=stride, progress=True)
        model.save(out)
    typer.echo(f"brightness > {model.brightness_min:.4f} and whiteness < {model.whiteness_max:.4f}: "
               f"train global Jaccard {model.fit_jaccard:.4f} on {model.n_train_chips} chips -> {out}")


@threshold_app.command("predict")
def threshold_predict(
    model: Path = typer.Option(..., help="Thresholds JSON written by 'baseline threshold fit'."),
    features: Path = typer.Option(..., help="A *_features folder (or dataset root)."),
    out: Path = typer.Option(..., "--out", callback=output_check, help="Folder for the masks {chip_id}.tif "
                                                                       "(submission format)."),
    split_name: Optional[str] = split_option(),
    force: bool = typer.Option(False, help="Replace the masks of another model already in OUT."),
):
    """Apply fitted thresholds to a folder of chips, writing one mask per chip."""
    from ..common.outputs import check_masks_folder, masks_output, model_fingerprint, outputs_apart
    from ..data.roots import resolve_split
    from .threshold import ThresholdModel, predict_folder

    outputs_apart([out], [model, features])  # never onto, into or around the chips or the thresholds
    check_masks_folder(out)  # before any work: a file, or a folder of anything but cloudkd's masks
    m = ThresholdModel.load(model)
    s = resolve_split(features, split_name)
    outputs_apart([out], [s.features_dir])
    with masks_output(out, f"thresholding {model.resolve()}", force, model_fingerprint([model])) as into:
        n = predict_folder(m, s.features_dir, into, progress=True)
    typer.echo(f"wrote {n} masks to {out}")
