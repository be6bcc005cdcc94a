"""``cloudkd landsat``: Landsat-8 (38-Cloud / 95-Cloud): generate, import, scene-level scoring."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer

from ...common.cli import (at_least, fail, file_output_check, folder_output_check, output_check, refuse_incomplete,
                           stage_app)

app = stage_app("Landsat-8 (38-Cloud / 95-Cloud): generate, import, scene-level scoring. Other commands "
                "take a 38-Cloud root as --data / features as they are.")


@app.command("synth")
def landsat_synth(
    out: Path = typer.Argument(..., callback=output_check, help="Folder to write 38-Cloud_training/ and "
                                                                "38-Cloud_test/ to."),
    train_scenes: int = typer.Option(6, callback=at_least(0), help="Training scenes (patches + per-patch gt + "
                                                                   "non-empty list)."),
    test_scenes: int = typer.Option(3, callback=at_least(0), help="Test scenes (patches + whole-scene gts), at unseen "
                                                                  ""
                                                                  "locations."),
    min_grid: int = typer.Option(2, callback=at_least(1), help="Fewest patches per scene side (scenes are ~384 px x "
                                                               "this)."),
    max_grid: int = typer.Option(3, callback=at_least(1), help="Most patches per scene side."),
    seed: int = typer.Option(0, callback=at_least(0), help="Random seed: equal settings give identical files."),
    difficulty: float = typer.Option(0.7, min=0.0, max=1.0, help="0 easy .. 1 hard."),
    overwrite: bool = typer.Option(False, help="Replace whatever is in OUT."),
):
    """Generate Landsat-8-like scenes at 30 m, cut into 384x384 patches in the exact 38-Cloud layout."""
    from .synth import Landsat38Config, synthesize_38cloud

    try:
        cfg = Landsat38Config(n_train_scenes=train_scenes, n_test_scenes=test_scenes, min_grid=min_grid,
                              max_grid=max_grid, seed=seed, difficulty=difficulty)
    except ValueError as exc:
        fail(str(exc), 2)
    res = synthesize_38cloud(out, cfg, overwrite=overwrite)
    if res.reused:
        typer.echo(f"{out}: already holds this dataset (same config); nothing to do")
    else:
        typer.echo(f"wrote {train_scenes} training + {test_scenes} test scenes to {out} in {res.seconds:.1f} s")


@app.command("import")
def landsat_import(
    root: Path = typer.Argument(..., help="A 38-Cloud / 95-Cloud root (or one of its *_training / *_test folders)."),
    out: Optional[Path] = typer.Option(None, callback=output_check, help="Where the On Cloud N view goes (default: "
                                                                         "ROOT.oncloudn beside "
                                                  "ROOT, or $CLOUDKD_LANDSAT_CACHE/ROOT.oncloudn)."),
    force: bool = typer.Option(False, help="Import again even when the source is unchanged, replacing what is in "
                                           "OUT."),
):
    """Write the patches in the On Cloud N layout (the other commands also do this by themselves, once)."""
    from .reader import import_38cloud, imported_root

    r = import_38cloud(root, out or imported_root(root), force=force)
    verb = "up to date, reused" if r.reused else f"imported in {r.seconds:.1f} s"
    for split in r.n_patches:
        typer.echo(f"{split}: {r.n_patches[split]} patches of {r.n_scenes[split]} scenes "
                   f"({r.n_empty[split]} empty patches left out)")
    typer.echo(f"{r.root}: {verb}")


@app.command("score")
def landsat_score(
    pred: Path = typer.Option(..., help="Folder of predicted patch masks {patch}.tif (from predict / teacher "
                                        "predict / baseline threshold predict)."),
    data: Path = typer.Option(..., help="The 38-Cloud root (or its import) whose test split was predicted."),
    split: str = typer.Option("test", help="Split to score."),
    report_dir: Optional[Path] = typer.Option(None, callback=folder_output_check, help="Where per_scene.csv goes "
                                                                                       "(default PRED's sibling "
                                                                                       "PRED_scenes/)."),
    json_path: Optional[Path] = typer.Option(None, "--json", callback=file_output_check, help="Write the summary "
                                                                                              "as JSON here."),
    masks: Optional[Path] = typer.Option(None, callback=folder_output_check, help="Also write the stitched scene "
                                                                                  "masks {scene}.tif here."),
    force: bool = typer.Option(False, help="Replace a report folder, --json file and masks folder cloudkd wrote "
                                           "(nothing else is replaced)."),
):
    """The 38-Cloud protocol: stitch patches into scenes; precision, recall, specificity, Jaccard, accuracy per
    scene, averaged over scenes."""
    from ...common.errors import DataError
    from ...common.outputs import check_folder, file_outputs, folder_output, output_problem, outputs_apart
    from ..roots import resolve_split
    from .scenes import SCENE_METRICS, score_scenes

    # the output policy, before any work: the default report folder too; outputs apart from the inputs and from
    # each other; an existing output only cloudkd's own, with --force
    report_dir = report_dir or pred.parent / f"{pred.name}_scenes"
    problem = output_problem(report_dir, "folder")
    if problem:
        raise DataError(problem)
    inputs = [pred, data]
    outputs_apart([report_dir, masks, json_path], inputs)
    outputs_apart([masks, json_path], [report_dir])
    outputs_apart([json_path], [masks])
    check_folder(report_dir, SCORE_REPORT_KIND, force, "--report-dir")
    if masks is not None:
        check_folder(masks, SCENE_MASKS_KIND, force, "--masks")
    with file_outputs({"--json": json_path}, "landsat-score-json", force, inputs=inputs):
        s = resolve_split(data, split)  # a 38-Cloud root is imported here: its import is an input too
        outputs_apart([report_dir, masks, json_path], [s.root])
        with ExitStack() as stack:  # the masks are built beside --masks and swapped in once all is written
            build = None if masks is None else stack.enter_context(
                folder_output(masks, SCENE_MASKS_KIND, force, "--masks"))
            rep = score_scenes(pred, s.root, split, masks_out=build, progress=True)
            with folder_output(report_dir, SCORE_REPORT_KIND, force, "--report-dir") as report_build:
                rep.write(report_build)
            rep.write(None, json_path)
    refuse_incomplete(rep, "predictions", "non-empty patch(es)", limit=20)
    table = rep.per_scene[["scene", "height", "width", *SCENE_METRICS]]
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{100 * v:.2f}"))
    m = rep.means
    typer.echo(f"mean over {len(table)} scenes (%): " + ", ".join(
        f"{k} {100 * v:.2f}" if v is not None else f"{k} -" for k, v in m.items()))
    typer.echo(f"per-scene CSV in {report_dir}")


#: the kinds of content of landsat score's --report-dir and --masks folders (the output policy's marks)
SCORE_REPORT_KIND = "landsat-score-report"
SCENE_MASKS_KIND = "landsat-scene-masks"
