"""What every benchmark script does with its result table: rewrite the CSV with all rows so far (a run that stops
keeps every finished row, and the next run reuses them)."""

import csv
from pathlib import Path


def write_rows(path, rows, columns=None):
    """Write ``rows`` (dicts) to the CSV ``path`` (folders made as needed), columns ``columns`` or the first row's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
