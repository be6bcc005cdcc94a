"""The project's error for bad input: caught by the command line, which prints it in one line and exits 2."""

from __future__ import annotations

from typing import Sequence


class DataError(ValueError):
    """Bad input data. The message names the chip and/or file and says what is wrong."""


def problems(errors: Sequence[str], limit: int = 20) -> str:
    """The first ``limit`` problems, one per indented line, and how many more there are."""
    head = "\n  ".join(errors[:limit])
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"  {head}{more}"
