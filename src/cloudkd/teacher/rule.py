"""The teacher's prediction-rule threshold, fitted on the validation chips of its fold (``teacher fit-threshold``).

The nnU-Net teacher's cloud probability is not calibrated, and its scale moves from run to run: the demo recipe's
teacher scores best at 0.5 on its validation chips, the same recipe trained on four times the chips at 0.2
(``docs/studies.md``, data scaling). So the threshold of its masks is fitted where the student's rule is fitted: on
the chips of the teacher's own fold that it did not train on (``splits_final.json``'s ``val``, read from the
dataset ``teacher prepare`` converted), never on a test split. The fit is recorded in ``WORKDIR/teacher.json``
(``threshold``), where ``NnUNetTeacher.from_workspace`` and ``teacher predict`` read it; training that fold again
(or another model) drops the fit, reusing it keeps it. Soft labels and the online teacher of distillation are
probabilities and do not use it.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..common.errors import DataError
from ..common.infer import DEFAULT_THRESHOLD, FIT_THRESHOLDS, best_rule, masks_from_probabilities, nodata_mask
from ..common.metrics import Confusion, confusion
from .workspace import DEFAULT_DATASET_ID, Workspace, dump_json, load_json

#: the thresholds a fit chooses from (the one grid of every fitted rule)
THRESHOLDS = FIT_THRESHOLDS


def threshold_curve(teacher, split, chip_ids: Iterable[str],
                    thresholds: Sequence[float] = THRESHOLDS) -> Dict[float, float]:
    """Global Jaccard of the prediction rule's masks at each threshold over ``chip_ids`` of a labelled split
    (``teacher``: anything with ``predict_chip(refl) -> (probability, mask)``)."""
    from ..data import read_chip, read_label

    total = [Confusion() for _ in thresholds]
    n = 0
    for cid in chip_ids:
        refl = read_chip(split.chip_dir(cid))
        prob, _ = teacher.predict_chip(refl)
        label, nodata = read_label(split.label_path(cid)) > 0, nodata_mask(refl)
        for i, t in enumerate(thresholds):
            total[i] += confusion(masks_from_probabilities(prob[None], t, nodata[None])[0], label)
        n += 1
    if not n:
        raise DataError("teacher threshold: no validation chips to fit it on")
    return {float(t): c.iou() for t, c in zip(thresholds, total)}


def best_threshold(curve: Dict[float, float]) -> float:
    """The threshold of the best Jaccard (ties: the one nearest the rule's default, 0.5)."""
    valid = {t: j for t, j in curve.items() if np.isfinite(j)}
    if not valid:
        raise DataError("teacher threshold: the validation chips hold no cloud and the teacher predicts none")
    return best_rule({(t, 0): j for t, j in valid.items()}, DEFAULT_THRESHOLD)[0]


def fold_validation(workspace: Workspace, fold: int, dataset_id: int = DEFAULT_DATASET_ID) -> Tuple[object, List[str]]:
    """(the labelled split ``teacher prepare`` converted, the chip ids of ``fold``'s validation chips)."""
    from ..data import resolve_split
    from .train import check_fold

    folds = check_fold(workspace, dataset_id, fold, "teacher threshold")
    name = workspace.dataset_name(dataset_id)
    source = load_json(workspace.raw / name / "dataset.json").get("cloudkd", {}).get("source")
    if not source:
        raise DataError(f"{workspace.raw / name / 'dataset.json'}: no source dataset recorded; run 'cloudkd "
                        "teacher prepare' again")
    split = resolve_split(source, "train")
    if not split.labels_dir.is_dir():
        raise DataError(f"teacher threshold: {split.labels_dir}: the labels of the dataset the teacher was prepared "
                        "from are not there (moved?)")
    return split, list(folds[fold]["val"])


def fit_threshold(workspace: Workspace, fold: int = 0, dataset_id: int = DEFAULT_DATASET_ID, device: str = "cpu",
                  thresholds: Sequence[float] = THRESHOLDS, teacher=None) -> dict:
    """Fit the threshold of teacher fold ``fold`` on its validation chips and record it in ``teacher.json``;
    returns the record (``threshold``, ``fold``, ``n_chips``, ``val_jaccard`` per threshold)."""
    from .model import NnUNetTeacher, teacher_record

    info = teacher_record(workspace)
    if fold not in info.get("folds", []):
        raise DataError(f"teacher threshold: fold {fold} is not trained in {workspace.root} (trained: "
                        f"{info.get('folds', [])})")
    split, ids = fold_validation(workspace, fold, dataset_id)
    teacher = teacher or NnUNetTeacher.from_workspace(workspace, folds=[fold], device=device)
    curve = threshold_curve(teacher, split, ids, thresholds)
    record = {"threshold": best_threshold(curve), "fold": fold, "n_chips": len(ids),
              "val_jaccard": {f"{t:g}": round(j, 6) for t, j in curve.items()}}
    dump_json(workspace.teacher_json, {**info, "threshold": record})
    return record


def recorded_threshold(info: dict, folds: Sequence[int]) -> Optional[float]:
    """The threshold ``teacher.json`` records for exactly these folds (a fit of fold 0 does not carry over to an
    ensemble of folds), or None."""
    rec = info.get("threshold")
    if not rec or [int(f) for f in folds] != [int(rec["fold"])]:
        return None
    return float(rec["threshold"])
