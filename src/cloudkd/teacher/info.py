"""``teacher info``: the plan(s) of a prepared dataset with parameter counts, and which folds are trained."""

from __future__ import annotations

from typing import Optional, Sequence

from ..common.errors import DataError
from .plans import describe_plan
from .workspace import BASE_CONFIGURATION, DEFAULT_DATASET_ID, Workspace, load_json, plans_file


def info(workspace: Workspace, dataset_id: int = DEFAULT_DATASET_ID,
         configurations: Optional[Sequence[str]] = None) -> dict:
    """The plan(s) of a prepared and planned dataset, with parameter counts, and which folds are trained."""
    pf = plans_file(workspace, dataset_id)
    if not pf.is_file():
        raise DataError(f"{pf}: no plans yet; run 'cloudkd teacher train' first (it plans and preprocesses the "
                        f"dataset written by 'cloudkd teacher prepare')")
    plans = load_json(pf)
    names = list(configurations) if configurations else [c for c in plans["configurations"]
                                                          if c == BASE_CONFIGURATION or c.startswith("2d_")]
    out = {"dataset": workspace.dataset_name(dataset_id), "plans_file": str(pf),
           "configurations": {c: describe_plan(plans, c) for c in names}}
    if workspace.teacher_json.is_file():
        out["teacher"] = load_json(workspace.teacher_json)
    return out
