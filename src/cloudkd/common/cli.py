"""Command-line helpers shared by every stage's typer sub-app: one way to fail, one ``--split`` option, and the
entry point that turns bad input into a one-line message and exit code 2 instead of a traceback."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import typer

from .errors import DataError
from .infer import DEFAULT_THRESHOLD
from .outputs import output_problem  # noqa: F401  (the output policy's check; re-exported for the callbacks)


def fail(msg: str, code: int = 1):
    """Print ``error: msg`` in red on stderr and exit with ``code`` (2: bad input)."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def split_option():
    """``--split``: which split of a dataset root a command reads."""
    return typer.Option(None, "--split", help="Split of a dataset root to use (train or test; default: train "
                                              "when the root has one, else test), e.g. test for a 38-Cloud root.")


def exclude_option():
    """``--exclude FILE``: chips to leave out of a training set (read and checked by
    :func:`cloudkd.data.exclude.read_exclude` / ``apply_exclude`` before any work)."""
    return typer.Option(None, "--exclude",
                        help="Chip ids to leave out (one per line, e.g. from `cloudkd evaluate audit --exclude-out`); "
                             "an id not in the dataset is an error.")


# ---------------------------------------------------------------------------------------------------------------
# Argument checks: one per kind of argument, run by typer before the command does any work. A failing check
# ends the command with exit code 2 and one line naming the option and the problem.
# ---------------------------------------------------------------------------------------------------------------
def check(rule: Callable[[object], Optional[str]]):
    """A typer callback from ``rule(value) -> problem or None`` (None values, i.e. options not given, pass)."""
    def callback(value):
        if value is None:
            return value
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            problem = rule(v)
            if problem:
                raise typer.BadParameter(problem)
        return value
    return callback


def at_least(n: float):
    """An integer or number >= ``n``."""
    return check(lambda v: None if v >= n else f"must be >= {n}, got {v}")


def finite(low: Optional[float] = None, high: Optional[float] = None, open_low: bool = False):
    """A finite number within [low, high] (``open_low``: strictly above ``low``)."""
    def rule(v):
        if not math.isfinite(v):
            return f"must be a finite number, got {v}"
        if low is not None and (v <= low if open_low else v < low):
            return f"must be {'>' if open_low else '>='} {low}, got {v}"
        if high is not None and v > high:
            return f"must be <= {high}, got {v}"
        return None
    return check(rule)


_check_threshold = check(lambda v: None if math.isfinite(v) and 0.0 < v < 1.0 else
                         f"must be a cloud probability in (0, 1), got {v}")


#: the largest chip / crop / tile side a command accepts (a 512 px chip is the challenge's)
MAX_SIDE = 4096


def side(low: int = 32, multiple: int = 1):
    """A square side in pixels: ``low`` .. MAX_SIDE, a multiple of ``multiple`` (a U-Net halves it 4 times)."""
    def rule(v):
        if not low <= v <= MAX_SIDE:
            return f"must be between {low} and {MAX_SIDE} pixels, got {v}"
        if v % multiple:
            return f"must be a multiple of {multiple} pixels, got {v}"
        return None
    return check(rule)


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def device_memory(device: str) -> Tuple[int, str]:
    """(bytes, what) of the memory work on ``device`` (cpu, cuda, cuda:N) has: the GPU's, else this machine's RAM
    (0 where unknown)."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(device[5:]) if str(device)[5:].isdigit() else torch.cuda.current_device()
            return torch.cuda.get_device_properties(index).total_memory, f"memory on {device}"
    return physical_memory(), "RAM"


def check_memory(estimate: float, what: str, share: float = 0.8, device: str = "cpu") -> None:
    """Refuse (exit 2, one line) work whose estimated peak memory exceeds ``share`` of the memory of ``device``
    (this machine's RAM, or a CUDA device's memory)."""
    total, where = device_memory(device)
    if total and estimate > share * total:
        fail(f"{what} needs about {estimate / 2**30:.1f} GiB of memory (estimate), more than this machine can "
             f"give ({total / 2**30:.1f} GiB of {where})", 2)


def device_problem(device: str) -> Optional[str]:
    """None when ``device`` (auto, cpu, cuda, cuda:N) exists on this machine, else what is wrong."""
    if device in ("auto", "cpu"):
        return None
    if device == "cuda" or device.startswith("cuda:"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return f"{device!r}: this machine has no CUDA device"
        index = device[5:]
        if index and (not index.isdigit() or int(index) >= n):
            return f"{device!r}: this machine has CUDA devices 0..{n - 1}"
        return None
    return f"{device!r} is not a device: use auto, cpu, cuda or cuda:N"


device_check = check(device_problem)


output_check = check(output_problem)
#: an output that is a file (a folder there is refused) / a folder (a file there is refused)
file_output_check = check(lambda v: output_problem(v, "file"))
folder_output_check = check(lambda v: output_problem(v, "folder"))


def cores(low: int = 1):
    """A count of worker processes or threads: ``low`` .. this machine's CPU cores (checked before any work, so
    a huge value is refused instead of starting that many processes or threads)."""
    def rule(v):
        n = os.cpu_count() or 1
        if not low <= v <= n:
            return f"must be between {low} and {n} (the CPU cores of this machine), got {v}"
        return None
    return check(rule)


def threshold_option(help: str = "Cloud probability threshold of the prediction rule (nodata pixels are always "
                                 "clear).", default: Optional[float] = DEFAULT_THRESHOLD):
    """``--threshold``: the same option, default and check on every command that makes masks (``default`` None:
    the command decides, e.g. from the trained run)."""
    return typer.Option(default, "--threshold", help=help, callback=_check_threshold)


#: the help of ``--threshold`` on a command that makes masks from a trained model
MODEL_THRESHOLD_HELP = ("Cloud probability threshold of the prediction rule (nodata pixels are always clear); "
                        "default: the one the model recorded (a student run's training threshold, an exported "
                        "model's export threshold).")


def model_threshold_option(help: str = MODEL_THRESHOLD_HELP):
    """``--threshold`` of a command that makes masks from a trained model: not given (None), the command takes the
    model's recorded threshold (:func:`cloudkd.student.runs.recorded_threshold`), never a default of its own."""
    return threshold_option(help, default=None)


#: the largest dilation (pixels) a command accepts: far beyond any annotator's margin (fit-rule's grid ends at 12)
MAX_DILATE = 64

#: ``--dilate``'s check: a whole number of pixels in [0, MAX_DILATE]
dilate_check = check(lambda v: None if 0 <= v <= MAX_DILATE else
                     f"must be a dilation between 0 and {MAX_DILATE} pixels, got {v}")


def model_dilate_option(help: str = "Pixels the prediction rule grows the cloud mask by (4-neighbour dilation, "
                                    "before nodata pixels are cleared); default: the one the model recorded (a "
                                    "student run's from 'cloudkd student fit-rule', an exported model's; else 0)."):
    """``--dilate`` of a command that makes masks from a trained model: not given (None), the command takes the
    model's recorded dilation (:func:`cloudkd.student.runs.recorded_rule`)."""
    return typer.Option(None, "--dilate", help=help, callback=dilate_check)


def refuse_incomplete(rep, what: str, items: str, limit: int = 50) -> None:
    """Print a scoring report's missing and invalid predictions and fail (exit 1) unless ``rep.ok``: the same
    refusal for chip folders (``evaluate score``) and Landsat scenes (``landsat score``)."""
    if rep.missing:
        typer.echo(f"refused: {len(rep.missing)} {items} have no prediction: {rep.missing[:limit]}")
    for msg in rep.invalid[:limit]:
        typer.echo(f"invalid: {msg}")
    if not rep.ok:
        fail(f"incomplete or invalid {what} ({len(rep.missing)} missing, {len(rep.invalid)} invalid)")


def stage_app(help: str) -> typer.Typer:
    """A stage's typer sub-app (help shown, no shell completion, plain tracebacks for real bugs)."""
    return typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=help)


#: click's UsageError as typer ships it (bad, missing or unknown options and arguments)
USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def run(app: typer.Typer) -> None:
    """Run ``app``. A user mistake ends with one line and exit code 2: a bad option or argument (named), or a
    :class:`DataError` (naming the file). Anything else is a bug and keeps its traceback."""
    try:
        code = app(standalone_mode=False, prog_name="cloudkd")
    except USAGE_ERROR as exc:  # bad / missing / unknown options and arguments
        where = exc.ctx.command_path if exc.ctx is not None else "cloudkd"
        typer.secho(f"error: {where}: {exc.format_message()}", fg="red", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except DataError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def format_table(rows: List[dict], columns: List[str]) -> str:
    """A plain-text table (markdown pipes) of ``rows`` restricted to ``columns``."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}"
        return "-" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep] + [line(b) for b in body])
