"""``cloudkd student fit-rule``: the prediction rule's dilation, learnt on a run's own validation chips.

The annotator draws its outlines with a margin outside the visible edge of a cloud, and a student's masks come out
tighter than its labels; the rule (:mod:`cloudkd.common.infer`) can grow the above-threshold mask by ``dilate``
pixels before the nodata pixels are cleared. :func:`fit_rule` predicts the run's validation chips once (the data,
folds, excluded chips and validation fold its ``student.json`` records, the weights of its ``student.pt``, no flip
TTA: as training validated), scores the global Jaccard of every dilation 0 .. ``max_dilate`` from those logits at
the run's threshold (or one given), keeps the best (of equal scores, the smaller dilation) and records it in
``student.json`` under :data:`cloudkd.student.runs.RULE_KEY`, with the table of scores. Every command that makes
masks from the run (predict, export and its ONNX metadata, pack and main.py, bench, real-bench, scenes) then
applies it. The rule is learnt from the generated validation split only; a run trained again writes its record
anew, without a fitted rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..common.errors import DataError
from ..common.metrics import Confusion, confusion

#: the largest dilation (pixels) fit-rule tries unless told otherwise: the validation Jaccard of the demo's student
#: peaks near 8 px and falls again by 10 (annotator margins of 2-30 px, a median of 12)
DEFAULT_MAX_DILATE = 12


@dataclass
class RuleFit:
    """The fitted rule of a run: ``threshold``, ``dilate`` (pixels) and the validation global Jaccard of every
    dilation tried (``jaccard[d]``), over ``n_chips`` validation chips."""

    run: Path
    threshold: float
    dilate: int
    jaccard: Dict[int, float]
    n_chips: int

    @property
    def before(self) -> float:
        """The validation Jaccard without dilation."""
        return self.jaccard[0]

    @property
    def after(self) -> float:
        """The validation Jaccard of the fitted dilation."""
        return self.jaccard[self.dilate]


def dilation_confusions(above: np.ndarray, labels: np.ndarray, nodata: Optional[np.ndarray],
                        max_dilate: int) -> List[Confusion]:
    """The confusion of the rule's masks with ``labels`` for every dilation 0 .. ``max_dilate``, from the
    above-threshold pixels ``above`` (N, H, W) of one batch: each dilation grows the previous one by a pixel (the
    rule's dilation by ``d`` is ``d`` such steps), the nodata pixels cleared after it as the rule does."""
    from ..common.infer import dilate_masks, masks_from_above

    out, grown = [], np.asarray(above, bool)
    for d in range(max_dilate + 1):
        if d:
            grown = dilate_masks(grown, 1)
        out.append(confusion(masks_from_above(grown, nodata), labels))
    return out


def best_dilation(jaccard: Dict[int, float]) -> int:
    """The dilation of the highest Jaccard; of equal ones, the smallest."""
    return min(jaccard, key=lambda d: (-jaccard[d], d))


def validation_index(info: dict, where: Path):
    """The validation chips (a :func:`cloudkd.data.chips.load_index` table) of the run whose ``student.json`` is
    ``info``: its data, folds, excluded chips and validation fold, split as training split them."""
    from ..data.datamodule import CloudDataModule

    cfg = info.get("config") if isinstance(info.get("config"), dict) else None
    if cfg is None or not cfg.get("data"):
        raise DataError(f"{where}: records no training config (data, folds, validation fold) to find its "
                        f"validation chips")
    val_fold = info.get("val_fold", cfg.get("val_fold", 0))
    dm = CloudDataModule(cfg["data"], cfg.get("folds"), int(val_fold), seed=int(cfg.get("seed", 0)),
                         exclude=cfg.get("exclude"))
    dm.setup_index()
    return dm.val_index


def fit_rule(run: os.PathLike | str, max_dilate: int = DEFAULT_MAX_DILATE, threshold: Optional[float] = None,
             batch_size: int = 8, device: str = "cpu", progress: bool = True, record: bool = True) -> RuleFit:
    """Fit the dilation of the prediction rule of the student run ``run`` (its folder, student.json or student.pt)
    on its validation chips (see the module) at ``threshold`` (None: the run's recorded one) and, with
    ``record``, write the rule into its ``student.json`` (atomically)."""
    import torch

    from ..common.infer import check_dilate, logit_threshold, nodata_mask, predict_logits
    from ..common.io import atomic_write
    from ..data.chips import read_chip, read_label
    from ..data.normalise import normalise
    from .runs import RULE_KEY, load_student, resolve_run, run_threshold

    p = Path(run)
    if p.suffix == ".ckpt":
        raise DataError(f"{p}: fit-rule fits the rule of a run's student.pt; give the run folder")
    max_dilate = check_dilate(max_dilate)
    folder, info, _ = resolve_run(p)
    info_path = folder / "student.json"
    threshold = run_threshold(info) if threshold is None else float(threshold)
    cut = logit_threshold(threshold)
    index = validation_index(info, info_path)
    if index.empty:
        raise DataError(f"{info_path}: its validation fold has no chips to fit the rule on")
    model = load_student(folder).to(device)
    total = [Confusion() for _ in range(max_dilate + 1)]
    rows = list(index.itertuples(index=False))
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="fit-rule", unit="batch")
    for group in batches:
        refl = np.stack([read_chip(r.features) for r in group])
        labels = np.stack([read_label(r.label) for r in group]) > 0
        x = torch.from_numpy(normalise(refl)).to(device)
        above = (predict_logits(model, x)[:, 0] > cut).cpu().numpy()
        for d, c in enumerate(dilation_confusions(above, labels, nodata_mask(refl), max_dilate)):
            total[d] += c
    if not any(c.union for c in total):
        raise DataError(f"{info_path}: neither the labels nor the masks of its {len(rows)} validation chip(s) have "
                        f"a cloud pixel: no dilation to choose")
    jaccard = {d: c.iou(empty=1.0) for d, c in enumerate(total)}
    fit = RuleFit(folder, threshold, best_dilation(jaccard), jaccard, len(rows))
    if record:
        info[RULE_KEY] = {"threshold": threshold, "dilate": fit.dilate,
                          "fitted_on": {"data": info["config"]["data"], "val_fold": info.get("val_fold"),
                                        "n_chips": fit.n_chips, "weights": "student.pt", "tta": False},
                          "val_jaccard": {str(d): j for d, j in jaccard.items()}}
        atomic_write(info_path, lambda t: Path(t).write_text(json.dumps(info, indent=2)))
    return fit
