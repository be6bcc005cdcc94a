"""``cloudkd student fit-rule``: the prediction rule's threshold and dilation, learnt on a run's own validation chips.

The annotator draws its outlines with a random margin outside the visible edge of a cloud (the generator's
annotator model, measured on real labels: a chip median drawn around ``AnnotatorStyle.margin``, 12 px). A student
trained on such labels learns the visible cloud as confident and the margin around it as uncertain: at the default
threshold 0.5 its masks take in that uncertain band wherever it lies, between broken clouds and around bright
ground as well. The rule (:mod:`cloudkd.common.infer`) can instead keep the pixels above a higher threshold and grow
that mask by ``dilate`` pixels, a margin of the annotator's shape. :func:`fit_rule` predicts the run's validation
chips once (the data, folds, excluded chips and validation fold its ``student.json`` records, the weights of its
``student.pt``, no flip TTA: as training validated), scores the global Jaccard of every threshold of
:data:`cloudkd.common.infer.FIT_THRESHOLDS` (or the one given) with every dilation 0 .. ``max_dilate`` from those
logits, keeps the best and records it in ``student.json`` under :data:`cloudkd.student.runs.RULE_KEY`, with the
table of scores. Of equal scores it keeps the smaller dilation, then the threshold nearest the run's own.

``max_dilate`` defaults to the annotator's median margin: a pixel ``r`` px beyond the visible cloud is labelled
cloud when the annotator's margin reaches it, which is more likely than not only while ``r`` is below the median
margin, so a larger dilation adds pixels that are more often clear than cloud (on the demo's 32 validation chips a
larger cap is chosen all the same, and scores lower on the held-out test split: ``docs/studies.md``, the
prediction rule). Every command that makes masks from the run (predict, export and its ONNX metadata, pack and
main.py, bench, real-bench, scenes) then applies the rule. It is learnt from the generated validation split only;
a run trained again writes its record anew, without a fitted rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..common.errors import DataError
from ..common.metrics import Confusion, confusion
from ..data.synth.annotator import AnnotatorStyle

#: the largest dilation (pixels) fit-rule tries unless told otherwise: the annotator model's median margin
DEFAULT_MAX_DILATE = int(round(AnnotatorStyle().margin))


@dataclass
class RuleFit:
    """The fitted rule of a run: ``threshold``, ``dilate`` (pixels) and the validation global Jaccard of every
    (threshold, dilation) tried (``jaccard[(t, d)]``), over ``n_chips`` validation chips; ``base``: the run's own
    threshold (the one training validated at) or the one given."""

    run: Path
    threshold: float
    dilate: int
    jaccard: Dict[Tuple[float, int], float]
    n_chips: int
    base: float

    @property
    def before(self) -> float:
        """The validation Jaccard of the rule before the fit: the base threshold, no dilation."""
        return self.jaccard[(self.base, 0)]

    @property
    def after(self) -> float:
        """The validation Jaccard of the fitted rule."""
        return self.jaccard[(self.threshold, self.dilate)]

    def by_dilation(self, threshold: Optional[float] = None) -> Dict[int, float]:
        """The validation Jaccard by dilation at ``threshold`` (default: the fitted one)."""
        t = self.threshold if threshold is None else threshold
        return {d: j for (u, d), j in self.jaccard.items() if u == t}


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


def rule_confusions(model, index, thresholds: Sequence[float], max_dilate: int, batch_size: int = 8,
                    device: str = "cpu", progress: Optional[str] = None) -> Dict[Tuple[float, int], Confusion]:
    """The confusion with the labels of the rule's masks for every (threshold, dilation 0 .. ``max_dilate``) over
    the chips of ``index`` (a :func:`cloudkd.data.chips.load_index` table with labels), the model's logits computed
    once per chip (no flip TTA). ``progress``: a progress bar's name, or None."""
    import torch

    from ..common.infer import logit_threshold, nodata_mask, predict_logits
    from ..data.chips import read_chip, read_label
    from ..data.normalise import normalise

    cuts = [logit_threshold(t) for t in thresholds]
    total = {(t, d): Confusion() for t in thresholds for d in range(max_dilate + 1)}
    rows = list(index.itertuples(index=False))
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch")
    for group in batches:
        refl = np.stack([read_chip(r.features) for r in group])
        labels = np.stack([read_label(r.label) for r in group]) > 0
        logits = predict_logits(model, torch.from_numpy(normalise(refl)).to(device))[:, 0].cpu().numpy()
        nodata = nodata_mask(refl)
        for t, cut in zip(thresholds, cuts):
            for d, c in enumerate(dilation_confusions(logits > cut, labels, nodata, max_dilate)):
                total[(t, d)] += c
    return total


def fit_rule(run: os.PathLike | str, max_dilate: int = DEFAULT_MAX_DILATE, threshold: Optional[float] = None,
             batch_size: int = 8, device: str = "cpu", progress: bool = True, record: bool = True) -> RuleFit:
    """Fit the threshold and dilation of the prediction rule of the student run ``run`` (its folder, student.json
    or student.pt) on its validation chips (see the module): every threshold of
    :data:`cloudkd.common.infer.FIT_THRESHOLDS` and the run's own, or only ``threshold`` when one is given, with
    every dilation 0 .. ``max_dilate``. With ``record``, write the rule into its ``student.json`` (atomically)."""
    from ..common.infer import FIT_THRESHOLDS, best_rule, check_dilate
    from ..common.io import atomic_write
    from .runs import RULE_KEY, load_student, resolve_run, run_threshold

    p = Path(run)
    if p.suffix == ".ckpt":
        raise DataError(f"{p}: fit-rule fits the rule of a run's student.pt; give the run folder")
    max_dilate = check_dilate(max_dilate)
    folder, info, _ = resolve_run(p)
    info_path = folder / "student.json"
    base = run_threshold({"config": info.get("config", {})}) if threshold is None else float(threshold)
    grid = sorted({*FIT_THRESHOLDS, base}) if threshold is None else [base]
    index = validation_index(info, info_path)
    if index.empty:
        raise DataError(f"{info_path}: its validation fold has no chips to fit the rule on")
    model = load_student(folder).to(device)
    total = rule_confusions(model, index, grid, max_dilate, batch_size, device, "fit-rule" if progress else None)
    if not any(c.union for c in total.values()):
        raise DataError(f"{info_path}: neither the labels nor the masks of its {len(index)} validation chip(s) have "
                        f"a cloud pixel: no rule to choose")
    jaccard = {k: c.iou(empty=1.0) for k, c in total.items()}
    t_best, d_best = best_rule(jaccard, base)
    fit = RuleFit(folder, t_best, d_best, jaccard, len(index), base)
    if record:
        table: Dict[str, Dict[str, float]] = {}
        for (t, d), j in jaccard.items():
            table.setdefault(f"{t:g}", {})[str(d)] = j
        info[RULE_KEY] = {"threshold": t_best, "dilate": d_best,
                          "fitted_on": {"data": info["config"]["data"], "val_fold": info.get("val_fold"),
                                        "n_chips": fit.n_chips, "weights": "student.pt", "tta": False,
                                        "thresholds": [float(t) for t in grid], "max_dilate": max_dilate},
                          "val_jaccard": table}
        atomic_write(info_path, lambda t: Path(t).write_text(json.dumps(info, indent=2)))
    return fit
