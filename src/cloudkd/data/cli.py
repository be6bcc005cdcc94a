"""``cloudkd data``: generate, look at, validate and fold a dataset in the On Cloud N layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..common.cli import (at_least, check_memory, cores, exclude_option, fail, file_output_check, finite,
                          folder_output_check, output_check, side, stage_app)
from .synth.sentinel2 import SynthConfig

#: peak memory of rendering one chip, per pixel (measured: 310-314 B/px at 512 and 1024 px)
SYNTH_BYTES_PER_PIXEL = 320

app = stage_app("1. Data: generate a benchmark, preview, validate, make location-grouped folds.")


@app.command()
def synth(
    out: Path = typer.Argument(..., callback=folder_output_check, help="Folder to write the dataset to (On Cloud "
                                                                       "N layout)."),
    n_train: int = typer.Option(200, callback=at_least(0), help="Chips in the train split (with labels)."),
    n_test: int = typer.Option(60, callback=at_least(0), help="Chips in the test split (held-out locations; labels in "
                                                              ""
                                                              "test_labels/)."),
    size: int = typer.Option(512, callback=side(32), help="Chip size in pixels."),
    seed: int = typer.Option(0, callback=at_least(0), help="Random seed: equal settings give identical files."),
    difficulty: float = typer.Option(0.7, min=0.0, max=1.0, help="0 easy .. 1 hard (0.7 = calibrated default)."),
    label_style: str = typer.Option("annotator", help="How clouds are labelled: annotator (generous smooth outlines, "
                                                      "the style measured on real labels) or opacity (the rule "
                                                      "before: smoothed opacity >= --label-threshold)."),
    label_threshold: float = typer.Option(0.3, callback=finite(0.0, 1.0, open_low=True),
                                          help="The opacity rule's level (with --label-style opacity)."),
    label_noise: float = typer.Option(0.0, callback=finite(0.0, 0.5),
                                      help="Share of train chips (0-0.5) given a wrong label of a real kind (swap, "
                                           "shift, empty, full, nodata), recorded per chip in "
                                           "train_synth_info.csv; test labels stay clean. 0 = none."),
    n_unlabelled: int = typer.Option(0, callback=at_least(0), help="Extra chips without labels at the train "
                                                                 "locations, in OUT/unlabelled_features (a pool to "
                                                                 "distil on: student distill --unlabelled)."),
    n_extra_train: int = typer.Option(0, callback=at_least(0), help="More train chips (with labels) at the train "
                                                                   "locations from their own random stream: the "
                                                                   "train and test chips without them stay the same "
                                                                   "(a data-scaling study keeps its test split)."),
    ground_gain_min: float = typer.Option(SynthConfig.ground_gain_min, callback=finite(0.0, 1.0, open_low=True),
                                          help="Darker ground: each chip's ground (not its clouds) scaled by a gain "
                                               "log-uniform in [this, 1], measured on real L2A chips beyond one "
                                               "scene (data/README.md). 1 = off, the generator before."),
    workers: int = typer.Option(0, callback=cores(0), help="Processes (0 = one per core)."),
    overwrite: bool = typer.Option(False, help="Replace whatever is in OUT."),
    preview: bool = typer.Option(True, help="Write OUT/preview.png with sample chips."),
):
    """Generate a realistic cloud benchmark in the exact On Cloud N layout."""
    from .roots import resolve_split
    from .synth.sentinel2 import synthesize
    from .viz import plot_chips

    try:
        cfg = SynthConfig(n_train=n_train, n_test=n_test, size=size, seed=seed, difficulty=difficulty,
                          label_style=label_style, label_threshold=label_threshold, label_noise=label_noise,
                          n_unlabelled=n_unlabelled, n_extra_train=n_extra_train, ground_gain_min=ground_gain_min)
    except ValueError as exc:
        fail(str(exc), 2)
    import os

    procs = workers or os.cpu_count() or 1
    check_memory(SYNTH_BYTES_PER_PIXEL * size * size * min(procs, n_train + n_test + n_extra_train),
                 f"--size {size} with {procs} worker process(es)")
    res = synthesize(out, cfg, workers=workers, overwrite=overwrite)
    if res.reused:
        typer.echo(f"{out}: already holds this dataset (same config); nothing to do")
    else:
        n = n_train + n_test + n_unlabelled + n_extra_train
        typer.echo(f"wrote {n} chips to {out} in {res.seconds:.1f} s ({1000 * res.seconds / n:.0f} ms/chip)")
    if preview:
        split = resolve_split(out, "train" if n_train else "test")
        ids = split.chip_ids()
        pick = ids[:: max(1, len(ids) // 6)][:6]
        typer.echo(f"preview: {plot_chips(split, pick, Path(out) / 'preview.png', title=f'{out} ({split.name})')}")


@app.command()
def preview(
    data: Path = typer.Argument(..., help="Dataset root or *_features folder."),
    out: Path = typer.Option(..., "--out", callback=output_check, help="PNG to write."),
    split: Optional[str] = typer.Option(None, help="train or test (default: train if present)."),
    n: int = typer.Option(6, callback=at_least(1), help="Number of chips."),
    pred: List[Path] = typer.Option([], help="Prediction folder(s) to show beside the label."),
    force: bool = typer.Option(False, help="Replace a PNG cloudkd wrote at OUT (nothing else is replaced)."),
):
    """Draw chips (RGB, NIR, label, predictions) to a PNG."""
    from ..common.outputs import file_outputs
    from .roots import resolve_split
    from .viz import plot_chips

    with file_outputs({"--out": out}, "preview-png", force, inputs=[data, *pred]):
        s = resolve_split(data, split)
        ids = s.chip_ids()
        pick = ids[:: max(1, len(ids) // n)][:n]
        typer.echo(str(plot_chips(s, pick, out, {p.name: p for p in pred})))


@app.command()
def validate(
    data: Path = typer.Argument(..., help="Dataset root or *_features folder."),
    split: Optional[str] = typer.Option(None, help="train or test (default: train if present)."),
    size: Optional[int] = typer.Option(None, callback=side(32), help="Required chip size (default: the first "
                                                                     "chip's)."),
):
    """Read every chip and label of a split and list every problem (exit 1 if any)."""
    from .roots import resolve_split
    from .chips import validate_split

    rep = validate_split(resolve_split(data, split), (size, size) if size else None, progress=True)
    if rep.ok:
        typer.echo(f"{rep.split.root} [{rep.split.name}]: {rep.n_chips} chips OK, shape {rep.shape}")
        return
    for e in rep.errors:
        typer.echo(e)
    fail(f"{len(rep.errors)} problem(s) in {rep.n_chips} chips")


@app.command()
def folds(
    data: Path = typer.Argument(..., help="Dataset root or train_features folder."),
    out: Path = typer.Option(..., "--out", callback=file_output_check, help="CSV to write (chip_id, location, "
                                                                            "fold)."),
    k: int = typer.Option(5, callback=at_least(2), help="Number of folds."),
    seed: int = typer.Option(0, callback=at_least(0), help="Seed for tie-breaking."),
    exclude: Optional[Path] = exclude_option(),
    force: bool = typer.Option(False, help="Replace a folds CSV cloudkd wrote at OUT (nothing else is replaced)."),
):
    """Location-grouped K folds (no location in two folds), written to a CSV (--exclude: fold -1 for those chips;
    the folds are made from all chips, so excluding chips moves no other chip)."""
    from ..common.outputs import file_outputs

    with file_outputs({"--out": out}, "folds-csv", force, inputs=[data, exclude]):
        _folds(data, out, k, seed, exclude)


def _folds(data: Path, out: Path, k: int, seed: int, exclude: Optional[Path]) -> None:
    from .chips import load_index
    from .exclude import exclude_ids, exclude_message
    from .roots import resolve_split
    from .folds import training_split, write_folds

    split = resolve_split(data, "train")
    index = load_index(split, require_labels=False)
    ids = []
    if exclude is not None:
        ids = exclude_ids(index, exclude, split.features_dir)
        typer.echo(exclude_message(len(ids), len(index), exclude))
    # folds of the full table, then fold -1 for the excluded chips (still listed, so that a reader knows them)
    f = training_split(index, exclude=ids, k=k, seed=seed)
    write_folds(f, out)
    counts = f.groupby("fold").agg(chips=("chip_id", "size"), locations=("location", "nunique"))
    typer.echo(counts.to_string())
    typer.echo(f"-> {out}")
