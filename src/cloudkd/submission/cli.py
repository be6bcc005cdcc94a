"""``cloudkd submission``: the On Cloud N submission: pack a model with the frozen main.py, test it like the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..common.cli import (at_least, check, fail, model_dilate_option, output_check, side, stage_app,
                          threshold_option)

app = stage_app("7. Submission: pack a model with the frozen main.py, emulate the On Cloud N runtime.")


@app.command()
def pack(
    checkpoint: Path = typer.Option(..., help="A student run folder (or its student.pt / a Lightning .ckpt in it)."),
    out: Path = typer.Option(Path("submission/submission.zip"), "--out", callback=output_check, help="The zip to "
                                                                                                     "write."),
    threshold: Optional[float] = threshold_option("Cloud probability threshold main.py applies (default: the "
                                                  "run's training threshold, which its validation scored at).",
                                                  default=None),
    dilate: Optional[int] = model_dilate_option("Pixels main.py grows the cloud mask by (default: the run's "
                                                "recorded rule, from 'cloudkd student fit-rule'; else 0)."),
    tta: bool = typer.Option(False, help="Average logits over flips in main.py."),
    batch: int = typer.Option(8, callback=at_least(1), help="Chips per batch in main.py."),
    chip_size: int = typer.Option(512, callback=side(32, multiple=16), help="Chip side in pixels (512 in the "
                                                                            "challenge)."),
    force: bool = typer.Option(False, help="Replace an existing zip at OUT that cloudkd wrote."),
):
    """Pack a trained model with the frozen submission/main.py into a submission zip."""
    from ..common.outputs import check_file, outputs_apart, record_file
    from .pack import MAIN_PY, pack as do_pack

    if out.is_dir():
        fail(f"{out}: is a folder; --out names the zip to write (e.g. {out / 'submission.zip'})", 2)
    # the output policy: never into the run (or onto the frozen main.py), --force replaces only a file cloudkd wrote
    run = checkpoint if checkpoint.is_dir() else next(
        (p for p in checkpoint.absolute().parents if (p / "student.json").is_file()), None)
    outputs_apart([out], [checkpoint, run, MAIN_PY])
    check_file(out, force)

    r = do_pack(checkpoint, out, threshold=threshold, dilate=dilate, tta=tta, batch_size=batch, chip_size=chip_size)
    record_file(out, "submission-zip")
    typer.echo(f"{r.zip_path}: {r.bytes:,} bytes ({r.bytes / 1024:.0f} KiB); model {r.config['model']['name']} "
               f"({r.params:,} params), threshold {r.config['threshold']}, dilate {r.config.get('dilate', 0)} px, tta {tta}")


def _interpreter_problem(path: str):
    import os
    import shutil

    found = shutil.which(path) if os.sep not in path else (path if os.path.exists(path) else None)
    if not found:
        return f"{path}: no such interpreter"
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        return f"{path}: not an executable file"
    return None


@app.command("runtime-test")
def runtime_test(
    zip_path: Path = typer.Option(..., "--zip", help="The submission zip."),
    data: Path = typer.Option(..., help="Chips to run on: a dataset root (its test split) or a *_features folder."),
    labels: Optional[Path] = typer.Option(None, help="Labels folder (or dataset root) to score the predictions."),
    json_out: Optional[Path] = typer.Option(None, "--json", callback=output_check, help="Write the verdict as JSON "
                                                                                        "here."),
    size: Optional[int] = typer.Option(None, callback=side(32), help="Expected mask side (default: the packed chip "
                                                                     "size)."),
    keep: Optional[Path] = typer.Option(None, callback=output_check, help="Use (and keep) this folder as the emulated "
                                                                          ""
                                                                          "/codeexecution."),
    python: Optional[str] = typer.Option(None, "--python", callback=check(_interpreter_problem),
                                         help="The interpreter that runs main.py (default: the runtime's Python 3.9 + "
                                              "torch 1.8.0 of `make runtime-env` when built, else this one)."),
    quiet: bool = typer.Option(False, help="Do not echo main.py's log."),
    force: bool = typer.Option(False, help="Replace a --keep folder an earlier runtime-test made, and a --json file "
                                           "cloudkd wrote (nothing else is replaced, even with --force)."),
):
    """Emulate the On Cloud N runtime: unzip, run main.py with no arguments, validate, score."""
    from ..common.outputs import check_file, check_folder, outputs_apart, record_file
    from .emulate import RUNTIME_KIND, default_python, describe_summary, describe_versions, runtime_test as emulate

    # the output policy, before any work: outputs apart from the inputs, --keep a folder runtime-test made (or new
    # or empty), --json a new file or one cloudkd wrote
    outputs_apart([keep, json_out], [zip_path, data, labels])
    if keep is not None:
        check_folder(keep, RUNTIME_KIND, force, "--keep")
    if json_out is not None:
        check_file(json_out, force, "--json")

    if python is None:
        python, why = default_python()
        typer.echo(f"runtime-test: main.py runs under {why}")
    v = emulate(zip_path, data, labels=labels, json_out=json_out, size=size, keep=keep, echo=not quiet,
                python=python, force=force)
    if json_out is not None:
        record_file(json_out, "runtime-verdict")
    documented = v.get("fallback_documented") or {}
    if documented:
        c = next(iter(documented))
        typer.echo(f"note: main.py gave {len(documented)} chip(s) the fallback the contract documents (bands "
                   f"missing, unreadable or not chip-size): {', '.join(list(documented)[:10])}"
                   f"{' ...' if len(documented) > 10 else ''} (e.g. {c}: {documented[c][:160]})")
    for line in v["reasons"]:
        typer.echo(f"FAIL: {line}")
    if quiet and keep is None and v.get("returncode") not in (None, 0) and v.get("log"):
        # main.py failed, its log was not echoed and went with the emulated root: show its end
        typer.echo("the end of main.py's log:")
        for line in v["log"].rstrip().splitlines()[-20:]:
            typer.echo(f"  | {line}")
    score = f"; global Jaccard {v['jaccard']:.4f}" if v["jaccard"] is not None else ""
    typer.echo(f"runtime-test {'passed' if v['ok'] else 'FAILED'}: {v['n_chips']} chips, {len(v['missing'])} "
               f"missing, {len(v['extra'])} extra, {len(v['invalid'])} invalid, main.py {v['seconds']} s{score}")
    typer.echo(f"  under {v['python']}: {describe_versions(v['versions'])}")
    if v.get("summary"):
        typer.echo(f"  main.py's summary: {describe_summary(v['summary'])}")
    if not v["ok"]:
        raise typer.Exit(1)
