"""``cloudkd onboard``: what runs on the satellite: ONNX / int8 export, whole scenes, downlink savings, the
side-by-side benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..common.cli import (at_least, cores, fail, finite, folder_output_check, model_dilate_option,
                          model_threshold_option, output_check, side, stage_app)
from .downlink import DEFAULT_THRESHOLDS

app = stage_app("6. On board: export to ONNX / int8, predict whole scenes, downlink savings, benchmark.")


@app.command()
def export(
    checkpoint: Path = typer.Option(..., help="A student run folder (or a file in it)."),
    out: Path = typer.Option(..., "--out", callback=folder_output_check, help="Folder for the ONNX artefacts "
                                                                              "and export.json."),
    calib: Optional[Path] = typer.Option(None, help="Chips (a *_features folder or dataset root) to calibrate int8."),
    heldout: Optional[Path] = typer.Option(None, help="Other chips for the checks (default: more calib chips)."),
    n_calib: int = typer.Option(16, callback=at_least(1), help="Calibration chips."),
    n_check: int = typer.Option(8, callback=at_least(1), help="Chips for the checks."),
    size: int = typer.Option(512, callback=side(32), help="Chip side for the fixed-shape model and the cost report."),
    int8: bool = typer.Option(True, help="Also write the int8 model (needs --calib)."),
    memory: bool = typer.Option(True, help="Measure the peak memory of one inference per artefact."),
    threshold: Optional[float] = model_threshold_option("Cloud probability threshold of the checks' masks, recorded "
                                                        "in the ONNX models (default: the run's recorded "
                                                        "threshold, which pack ships too)."),
    dilate: Optional[int] = model_dilate_option("Pixels the prediction rule grows the checks' masks by, recorded in "
                                                "the ONNX models (default: the run's recorded dilation, which pack "
                                                "ships too; else 0)."),
    force: bool = typer.Option(False, help="Replace an export cloudkd wrote at OUT (nothing else is replaced)."),
):
    """ONNX fp32 (dynamic and fixed batch) and int8 export, checked against PyTorch, with a size/cost report."""
    from ..data.roots import resolve_split
    from .export import INT8_MIN_IOU, export as do_export

    def feats(p):  # a dataset root or a *_features folder (resolve_split takes both)
        return None if p is None else resolve_split(p).features_dir

    rep = do_export(checkpoint, out, calib=feats(calib), heldout=feats(heldout), n_calib=n_calib, n_check=n_check,
                    size=size, int8=int8 and calib is not None, measure_memory=memory,
                    threshold=threshold, force=force, dilate=dilate)
    typer.echo(f"{'artefact':14s} {'params':>9s} {'bytes':>10s} {'GMACs/chip':>10s} {'peak MB':>8s} {'infer MB':>8s}")
    for name, a in rep.artefacts.items():
        typer.echo(f"{name:14s} {a['params']:>9,d} {a['bytes']:>10,d} {a['macs'] / 1e9:>10.2f} "
                   f"{a.get('peak_rss_mb', float('nan')):>8.0f} {a.get('inference_mb', float('nan')):>8.0f}")
    c = rep.checks
    if "onnx_fp32_max_abs_diff" in c:
        typer.echo(f"ONNX fp32 vs PyTorch on {c['n_check_chips']} chips: max abs logit diff "
                   f"{c['onnx_fp32_max_abs_diff']:.2e}, mask agreement {c['onnx_fp32_mask_agreement']:.6f}")
    if rep.int8_ok is not None:
        verdict = "OK" if rep.int8_ok else f"BELOW the {INT8_MIN_IOU} target"
        typer.echo(f"int8 vs fp32 mask IoU {c['int8_vs_fp32_mask_iou']:.4f} on {c['n_check_chips']} held-out chips "
                   f"(calibrated on {c['n_calib_chips']}): {verdict}")
    elif calib is None:
        typer.echo("no --calib chips: int8 export and the checks on real inputs were skipped")
    typer.echo(f"on-board artefact: {out / rep.onboard_artefact} (threshold {rep.threshold:g}, dilate "
               f"{rep.dilate} px)")
    typer.echo(f"report: {out / 'export.json'}")
    if rep.int8_ok is False:  # the int8 model exists but must not be flown
        fail(f"the int8 model missed its check against fp32 (mask IoU {c['int8_vs_fp32_mask_iou']:.4f} < "
             f"{INT8_MIN_IOU}); use the fp32 model {out / rep.onboard_artefact}", 1)


@app.command("predict-scene")
def predict_scene_cmd(
    scene: Path = typer.Argument(..., help="A Sentinel-2 .SAFE product folder (L2A or L1C), a folder of B02/B03/B04/"
                                           "B08 band files (GeoTIFF, COG, JPEG 2000 ...), or one multi-band file."),
    model: Path = typer.Option(..., help="A student run folder, or an exported .onnx model."),
    out: Path = typer.Option(..., "--out", callback=output_check, help="Output mask: a Cloud-Optimised GeoTIFF "
                                                                       "(uint8, 1 = cloud) on the input's grid."),
    prob_out: Optional[Path] = typer.Option(None, "--prob-out", callback=output_check,
                                            help="Also the cloud probability, a second COG (uint8, round(255 p))."),
    chip_report: Optional[Path] = typer.Option(None, "--chip-report", callback=output_check,
                                               help="CSV of the 512x512 chip grid with each chip's cloud fraction."),
    offset: Optional[float] = typer.Option(None, "--offset", callback=finite(),
                                           help="Added to the digital numbers before --scale: needed for products "
                                                "without their MTD_MSIL*.xml (-1000 from processing baseline 04.00, "
                                                "25 January 2022, on); overrides the product's."),
    scale: Optional[float] = typer.Option(None, "--scale", callback=finite(0, open_low=True),
                                          help="Digital numbers per unit reflectance (the quantification value, "
                                               "10000 for Sentinel-2); overrides the product's."),
    tile: int = typer.Option(512, callback=side(32), help="Tile side."),
    overlap: int = typer.Option(64, callback=at_least(0), help="Overlap between tiles (blended)."),
    batch: int = typer.Option(4, callback=at_least(1), help="Tiles per batch."),
    threshold: Optional[float] = model_threshold_option(),
    dilate: Optional[int] = model_dilate_option(),
    threads: Optional[int] = typer.Option(None, callback=cores(1), help="CPU threads."),
    force: bool = typer.Option(False, help="Replace existing output files cloudkd wrote."),
):
    """Cloud mask of a whole scene or Sentinel-2 product by overlapping, blended tiles, in bounded memory: a
    georeferenced Cloud-Optimised GeoTIFF, optionally the probability and a per-chip cloud report."""
    import warnings

    from ..data.products import ProductWarning, open_scene
    from .scene import load_predictor, predict_scene

    if overlap >= tile:
        fail(f"--overlap must be smaller than --tile, got {overlap} for tile {tile}", 2)
    from ..common.outputs import check_file, outputs_apart, record_file

    outputs = [o for o in (out, prob_out, chip_report) if o is not None]
    if len({o.absolute() for o in outputs}) != len(outputs):
        fail(f"--out, --prob-out and --chip-report must be different files, got {', '.join(map(str, outputs))}", 2)
    # the output policy: never onto, into or around the scene or the model; --force replaces only cloudkd's files
    outputs_apart(outputs, [scene, model])
    for o in outputs:
        check_file(o, force)
    with warnings.catch_warnings():  # printed below as one line each
        warnings.simplefilter("ignore", ProductWarning)
        sc = open_scene(scene, offset=offset, scale=scale)  # bad input: one line naming the file, before any work
    try:
        outputs_apart(outputs, [b.path for b in sc.bands])  # the band files a product folder points to
        if model.suffix == ".onnx" and model.is_file():  # a fixed-size model (model_fp32_b1.onnx) and the tiles
            from ..common.errors import DataError
            from ..common.onnx import fixed_size_problem, ort_session

            problem = fixed_size_problem(ort_session(model), min(tile, sc.height), min(tile, sc.width))
            if problem:
                raise DataError(f"{model}: {problem}; choose --tile to match")
        for msg in sc.warnings:
            typer.secho(f"warning: {msg}", fg="yellow", err=True)
        typer.echo(sc.describe())
        from ..student.runs import recorded_rule

        rule = recorded_rule(model)
        threshold = rule[0] if threshold is None else threshold
        dilate = rule[1] if dilate is None else dilate
        r = predict_scene(sc, out, load_predictor(model, threads), tile=tile, overlap=overlap, batch_size=batch,
                          threshold=threshold, prob_out=prob_out, chip_report=chip_report,
                          tags={"CLOUDKD_MODEL": str(model)}, dilate=dilate)
    finally:
        sc.close()
    for o in outputs:
        record_file(o, "scene-output")
    area = f", {r['km2']:,.0f} km², {r['km2'] / r['seconds']:,.0f} km²/s" if r["km2"] else ""
    typer.echo(f"{r['height']}x{r['width']} scene, {r['tiles']} tiles in {r['seconds']:.1f} s{area} -> {out}"
               + (" (georeferenced COG)" if r["georeferenced"] else " (COG)"))
    if prob_out is not None:
        typer.echo(f"cloud probability -> {prob_out}")
    if chip_report is not None:
        typer.echo(f"chip report: {r['n_chips']} chips of 512x512 (edge chips smaller), mean cloud fraction "
                   f"{r['mean_cloud_fraction']:.3f} -> {chip_report}")


def _cloud_fractions(value: str) -> str:
    """``--thresholds``: cloud-cover fractions in [0, 1], comma-separated (checked before any work)."""
    import math

    if value is None:
        return value
    items = [t.strip() for t in value.split(",") if t.strip()]
    for t in items:
        try:
            x = float(t)
        except ValueError:
            raise typer.BadParameter(f"expected cloud-cover fractions in [0, 1] separated by commas, got {t!r}") \
                from None
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            raise typer.BadParameter(f"a cloud-cover threshold must be a fraction in [0, 1], got {t!r}")
    if not items:
        raise typer.BadParameter("give at least one cloud-cover threshold")
    return value


@app.command()
def downlink(
    pred: Path = typer.Option(..., help="A folder of predicted chip masks, or one scene mask TIFF."),
    labels: Optional[Path] = typer.Option(None, help="Labels: a folder (chips) or a mask TIFF (scene)."),
    features: Optional[Path] = typer.Option(None, help="The chips' features folder (bytes from the band files)."),
    tile: int = typer.Option(512, callback=side(32), help="For a scene: chip size the scene is cut into."),
    thresholds: str = typer.Option(",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS), callback=_cloud_fractions,
                                   help="Cloud-cover thresholds (fractions in [0, 1]), comma-separated."),
    out: Optional[Path] = typer.Option(None, "--out", callback=output_check, help="Folder for downlink.json and "
                                                                                  "downlink.png."),
    force: bool = typer.Option(False, help="Replace a downlink report cloudkd wrote at OUT (nothing else is "
                                           "replaced)."),
):
    """Downlink savings of a cloud mask: chips/pixels/bytes discarded per cloud-cover threshold, clear pixels lost."""
    import json as _json

    from . import downlink as dl
    from ..common.io import atomic_write
    from ..common.outputs import check_folder, folder_output, outputs_apart
    from ..data.chips import read_mask

    if out is not None:  # the output policy, before any work
        outputs_apart([out], [pred, labels, features])
        check_folder(out, DOWNLINK_KIND, force, "--out")

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
        with folder_output(out, DOWNLINK_KIND, force, "--out") as build:
            atomic_write(build / "downlink.json", lambda t: Path(t).write_text(_json.dumps(summ, indent=2)))
            dl.plot(summ, build / "downlink.png")
        typer.echo(f"-> {out / 'downlink.json'}, {out / 'downlink.png'}")


#: the kinds of content of downlink's and bench's --out folders (the output policy's marks)
DOWNLINK_KIND = "downlink-report"
BENCH_KIND = "bench-report"


@app.command("bench")
def bench_cmd(
    model: List[str] = typer.Option([], "--model", "-m", metavar="[NAME=]PATH",
                                    help="A row: PATH a student run folder (or its student.pt / a .ckpt), an .onnx "
                                         "file, an nnU-Net work folder or a thresholding model's JSON; NAME "
                                         "defaults to the file or folder name. Repeatable."),
    data: Optional[Path] = typer.Option(None, help="Labelled held-out chips (dataset root: its test split, or a "
                                                   "*_features folder). Needed with --model; the demo's: "
                                                   "data/generated/demo."),
    out: Optional[Path] = typer.Option(None, "--out", callback=output_check, help="Folder for bench.md, bench.json, "
                                                                                  "bench.png and the speed "
                                                                                  "reference's model. Needed with "
                                                                                  "--model; the demo's: runs/bench."),
    demo_dir: Optional[Path] = typer.Option(None, "--demo", help="Add the rows of the models make demo left here "
                                                                 "(thresholding, teacher, ResNet-34, student in "
                                                                 "PyTorch, ONNX fp32 and int8; the student exported "
                                                                 "first when its export is missing). Without --model: "
                                                                 "runs/demo."),
    student: Optional[Path] = typer.Option(None, help="With --demo: the student run (default DEMO/student)."),
    resnet34: Optional[Path] = typer.Option(None, help="With --demo: the smp ResNet-34 run (default "
                                                       "DEMO/distill/resnet34)."),
    export_dir: Optional[Path] = typer.Option(None, help="With --demo: the student's cloudkd export folder (default "
                                                         "DEMO/export; made if missing)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Add the speed reference row (unet-s "
                                                                            "int8 with fixed random weights, made in "
                                                                            "OUT)."),
    peer: bool = typer.Option(True, "--peer/--no-peer", help="Add the real-trained ukis-csmask peer when it is "
                                                             "installed (about 1.3 s per chip on 2 cores)."),
    threads: int = typer.Option(2, callback=cores(1), help="Threads for every row."),
    batch: int = typer.Option(8, callback=at_least(1), help="Batch size of the throughput pass."),
    n_latency: int = typer.Option(16, callback=at_least(1), help="Chips timed one by one."),
    limit: Optional[int] = typer.Option(None, callback=at_least(1), help="Use only the first N chips."),
    threshold: Optional[float] = model_threshold_option("Cloud probability threshold of every model's masks "
                                                        "(default: each model's recorded threshold: a student "
                                                        "run's, an exported model's; the rule's default for the "
                                                        "teacher)."),
    dilate: Optional[int] = model_dilate_option("Pixels the prediction rule grows every model's masks by (default: "
                                                "each model's recorded dilation; 0 for those without one)."),
    force: bool = typer.Option(False, help="Replace a bench cloudkd wrote at OUT (nothing else is replaced)."),
):
    """Models side by side on the same held-out chips: latency, throughput, size, MACs, memory, Jaccard (with the
    speed reference and the ukis-csmask peer). Without --model: the demo's models (--demo runs/demo)."""
    import json as _json

    from ..common.io import atomic_write
    from ..common.outputs import check_folder, folder_output, outputs_apart
    from ..data.roots import resolve_split
    from .bench import (DEMO_DATA, DEMO_DIR, DEMO_OUT, DEMO_ROWS, PEER, REFERENCE, bench, demo_models, parse_model,
                        peer_model, plot, reference_model, row_kind, to_markdown)

    rows = [parse_model(m) for m in model]
    if not rows:  # the demo's table, as the README spells it
        demo_dir, data, out = demo_dir or DEMO_DIR, data or DEMO_DATA, out or DEMO_OUT
    if demo_dir is None:
        for option, value in (("--student", student), ("--resnet34", resnet34), ("--export-dir", export_dir)):
            if value is not None:
                fail(f"{option} chooses a model of the demo (--demo DIR); give other models as --model rows", 2)
    for option, value in (("--data", data), ("--out", out)):
        if value is None:
            fail(f"{option} is needed with --model", 2)
    names = [n for n, _ in rows]
    for n in names:
        if n in (REFERENCE, PEER) or (demo_dir is not None and n in DEMO_ROWS):
            fail(f"--model {n}=...: {n} is a row of " + ("--demo" if n in DEMO_ROWS else "--reference / --peer")
                 + "; name the model otherwise", 2)
        if names.count(n) > 1:
            fail(f"--model: two rows named {n!r}; name them with NAME=PATH", 2)
    for n, path in rows:
        row_kind(n, path)  # a model bench can run, or one line naming the path
    # the output policy, before any work (demo_models may export the student): apart from the data and the models
    outputs_apart([out], [data, demo_dir, student, resnet34, export_dir, *(p for _, p in rows)])
    check_folder(out, BENCH_KIND, force, "--out")
    split = resolve_split(data, "test") if not data.name.endswith("_features") else resolve_split(data)
    models = {}
    if demo_dir is not None:
        models = {k: str(v) for k, v in demo_models(split, demo_dir, student, resnet34, export_dir, threshold,
                                                     log=typer.echo, dilate=dilate).items()}
    models.update(rows)
    if peer and (p := peer_model(log=typer.echo)) is not None:
        models[PEER] = str(p)
    with folder_output(out, BENCH_KIND, force, "--out") as build:
        if reference:  # made with the report, so bench.json names a model that is there
            models[REFERENCE] = str(reference_model(build, split.features_dir))
        table = bench(models, str(split.features_dir), str(split.labels_dir), threads=threads, batch=batch,
                      n_latency=n_latency, limit=limit, threshold=threshold, dilate=dilate)
        for r in table:
            if r["name"] == REFERENCE:
                r["path"] = str(out / Path(r["path"]).name)
        md = to_markdown(table)
        atomic_write(build / "bench.md", lambda t: Path(t).write_text(md + "\n"))
        atomic_write(build / "bench.json", lambda t: Path(t).write_text(_json.dumps(table, indent=2)))
        plot(table, build / "bench.png")
    typer.echo(md)
    typer.echo(f"-> {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'}")
