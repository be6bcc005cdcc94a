"""Command-line helpers shared by every stage's typer sub-app: one way to fail, one ``--split`` option, and the
entry point that turns bad input into a one-line message and exit code 2 instead of a traceback."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .errors import DataError


def fail(msg: str, code: int = 1):
    """Print ``error: msg`` in red on stderr and exit with ``code`` (2: bad input)."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def split_option():
    """``--split``: which split of a dataset root a command reads."""
    return typer.Option(None, "--split", help="Split of a dataset root to use (train or test; default: train "
                                              "when the root has one, else test), e.g. test for a 38-Cloud root.")


def _check_threshold(value):
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"must be a cloud probability in (0, 1), got {value}")
    return value


def threshold_option(help: str = "Cloud probability threshold of the prediction rule (nodata pixels are always "
                                 "clear).", default: Optional[float] = -1.0):
    """``--threshold``: the same option, default and check on every command that makes masks (``default`` -1:
    the rule's own default; None: the command decides, e.g. from the trained run)."""
    from .infer import DEFAULT_THRESHOLD

    return typer.Option(DEFAULT_THRESHOLD if default == -1.0 else default, "--threshold", help=help,
                        callback=_check_threshold)


def stage_app(help: str) -> typer.Typer:
    """A stage's typer sub-app (help shown, no shell completion, plain tracebacks for real bugs)."""
    return typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=help)


def run(app: typer.Typer) -> None:
    """Run ``app``; a :class:`DataError` ends with a one-line message naming the file, and exit code 2."""
    try:
        app()
    except DataError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


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
