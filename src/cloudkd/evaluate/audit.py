"""``cloudkd evaluate audit``: rank the chips of a labelled split by how likely their label is wrong.

A trained model predicts every chip once (in batches); each label is compared with the model's mask
and with the chip's own pixels. The evidence per chip (columns of ``audit.csv``):

* ``label_iou``: IoU of the label with the model's mask (the prediction rule at ``threshold``; 1 when both are
  empty);
* ``label_fraction`` / ``pred_fraction``: the cloud fraction of the label and of the model's mask;
* ``label_on_dark``: the share of labelled cloud on nodata pixels (0 in every band) or dark pixels (mean visible
  reflectance below ``DARK``, darker than any cloud);
* ``bright_unlabelled``: the share of the chip's pixels that are bright (mean visible reflectance above ``BRIGHT``)
  yet labelled clear (snow and bright ground do this too: evidence for a human, not proof);
* ``best_shift_px`` / ``shift_gain``: the translation of the label (up to ``MAX_SHIFT`` of the chip side) that
  best matches the model's mask, and how much smoothed IoU the move alone wins (:func:`shift_search`: the moved
  and the unmoved label are compared over the same window, so cropping away a disagreeing edge wins nothing; a
  right label gains about 0, a label drawn for a shifted grid a lot).

``suspicion`` (in [0, 1], higher = label more likely wrong) is the share of the chip's pixels the label gets wrong
in the model's eyes, each pixel weighted by how sure the model is there (``w = |p - t| / max(t, 1 - t)`` for
probability ``p`` and threshold ``t``: 1 where it is certain, 0 on the fence; nodata counts 1), plus the shift
gain: ``sum(w * (label ^ mask)) / n + shift_gain``, clipped to 1. So a label that contradicts a confident model
over much of the chip (an empty label under thick cloud, a full one on clear ground, another acquisition's
outlines) ranks above the honest disagreement of thin haze the model is unsure of, and a label that matches the
model only after a move (a misregistered scene: its outlines are all wrong, even where they still overlap) adds
what the move wins. No weight in it is fitted to any labels. The share of the chip, not of the label's union with
the mask, is the measure because it is what a wrong label feeds to training, and because the union made a few
pixels of outline on a small cloud look as wrong as a swapped overcast label (the benchmark's judges, on chips
they never saw, ranked the injected errors better with it: ``benchmarks/label_audit.py``).

Out of fold (:func:`train_fold_models`): one model per location-grouped fold, each trained without that fold's
chips, so every chip is judged by a model that never learnt its label.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..common.errors import DataError
from ..common.infer import (DEFAULT_THRESHOLD, masks_from_logits, masks_from_probabilities, nodata_mask,
                            probabilities_from_logits)

#: smoothing of the IoU the shift search compares, as a share of the window's pixels
SMOOTH = 0.1
#: mean visible (B02, B03, B04) reflectance below which a pixel is darker than any cloud
DARK = 0.06
#: mean visible reflectance above which a pixel is as bright as thick cloud
BRIGHT = 0.3
#: the largest label shift searched, as a share of the chip's side
MAX_SHIFT = 0.2
#: the suspicion above which ``--exclude-out`` lists a chip: a fifth of its pixels confidently wrong (or won by a
#: move of the label); a human confirms the list before it goes to ``--exclude``
EXCLUDE_ABOVE = 0.2
#: the shift search runs on masks averaged down to at most this many pixels a side
SHIFT_GRID = 128
COLUMNS = ["rank", "chip_id", "location", "suspicion", "label_iou", "label_fraction", "pred_fraction",
           "label_on_dark", "bright_unlabelled", "best_shift_px", "shift_gain", "fold"]


@dataclass
class AuditModel:
    """A model as the audit uses it: normalised batch (N, 4, H, W) torch tensor -> cloud logits (N, 1, H, W)."""

    name: str
    kind: str
    logits: Callable


def load_model(model: Optional[os.PathLike | str] = None, teacher_nnunet: Optional[os.PathLike | str] = None,
               threads: Optional[int] = None) -> AuditModel:
    """Any model :func:`cloudkd.student.predictor.load_predictor` loads (a student run folder or its student.pt / a
    .ckpt, an ``.onnx`` file, an nnU-Net work folder), or (``teacher_nnunet``) an nnU-Net work folder. Errors name
    the path and what was expected."""
    if (model is None) == (teacher_nnunet is None):
        raise DataError("give one model: --model RUN (a student run folder or an .onnx file) or "
                        "--teacher-nnunet WORKDIR")
    from ..student.predictor import load_predictor

    if teacher_nnunet is not None:
        t = load_predictor(teacher_nnunet, kind="nnunet")
        return AuditModel(f"nnU-Net teacher ({teacher_nnunet})", "nnunet", t.logits)
    p = load_predictor(model, threads)
    name = {"onnx": f"ONNX {Path(model)}", "student": f"student {Path(model)}"}.get(p.kind, p.name)
    return AuditModel(name, p.kind, p.logits)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def shift_search(label: np.ndarray, mask: np.ndarray, smooth: float = SMOOTH, max_shift: float = MAX_SHIFT):
    """(best shift in pixels, its gain) of ``label`` against the model's ``mask``: for every translation ``d`` up to
    ``max_shift`` of the side, the smoothed IoU of the label moved by ``d`` with the mask, over the window where the
    moved label lies, minus the smoothed IoU of the label as it lies over that same window. Comparing both on one
    window leaves only what the move itself wins: cropping away an edge where label and model disagree wins
    nothing, so a right label gains about 0 and a label drawn for a shifted grid gains a lot, whatever fills the
    pixels it left. By FFT cross-correlation of the masks block-averaged to at most SHIFT_GRID pixels a side."""
    f = max(1, int(np.ceil(max(label.shape) / SHIFT_GRID)))
    lab, pr = _block_mean(label.astype(np.float32), f), _block_mean(mask.astype(np.float32), f)
    h, w = lab.shape
    r = max(1, int(round(max_shift * max(h, w))))
    shape = (h + r, w + r)  # zero padding >= r: no wrap-around for shifts up to r
    dy = dx = np.r_[0:r + 1, -r:0]
    at = np.ix_(dy % shape[0], dx % shape[1])
    ones = np.ones_like(lab)
    spec = {name: np.fft.rfft2(a, shape) for name, a in
            (("ones", ones), ("label", lab), ("mask", pr), ("both", pr * lab))}

    def corr(a, b):  # corr(a, b)[i, j] = sum over p of a(p) * b(p - d): b moved by d = (dy[i], dx[j])
        return np.fft.irfft2(spec[a] * np.conj(spec[b]), shape)[at]

    area, mask_in = corr("ones", "ones"), corr("mask", "ones")  # the window's area and the mask's cloud in it
    k = smooth * area
    inter_moved, label_moved = corr("mask", "label"), corr("ones", "label")  # the label moved by d
    inter_still, label_still = corr("both", "ones"), corr("label", "ones")  # the label as it lies, same window
    gain = ((inter_moved + k) / (label_moved + mask_in - inter_moved + k)
            - (inter_still + k) / (label_still + mask_in - inter_still + k))
    gain = np.round(gain, 6)  # FFT round-off apart; of equal gains the shortest move wins (no move when none helps)
    dist = np.hypot(dy[:, None], dx[None, :])
    i, j = np.unravel_index(int(np.argmin(np.where(gain == gain.max(), dist, np.inf))), gain.shape)
    return float(f * dist[i, j]), max(0.0, float(gain[i, j]))


def chip_evidence(refl: np.ndarray, label: np.ndarray, prob: np.ndarray,
                  threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The evidence of one chip: reflectance (4, H, W), label {0, 1} (H, W) and the model's cloud probability
    (H, W); the model's mask is the prediction rule's (probability above ``threshold``, nodata clear)."""
    lab = label > 0
    nodata = nodata_mask(refl)
    pred = masks_from_probabilities(prob[None], threshold, nodata[None])[0] > 0
    n = lab.size
    vis = refl[:3].mean(axis=0)
    inter, union = int(np.logical_and(lab, pred).sum()), int(np.logical_or(lab, pred).sum())
    sure = np.where(nodata, 1.0, np.abs(prob - threshold) / np.where(prob > threshold, 1 - threshold, threshold))
    wrong = float((sure * (lab ^ pred)).sum()) / n
    shift_px, shift_gain = shift_search(lab, pred)
    return {
        "label_iou": inter / union if union else 1.0,
        "label_fraction": float(lab.mean()),
        "pred_fraction": float(pred.mean()),
        "label_on_dark": float((lab & (nodata | (vis < DARK))).sum() / lab.sum()) if lab.any() else 0.0,
        "bright_unlabelled": float((~lab & (vis > BRIGHT) & ~nodata).sum() / n),
        "best_shift_px": shift_px,
        "shift_gain": shift_gain,
        "suspicion": float(np.clip(wrong + shift_gain, 0.0, 1.0)),
    }


def audit_chips(index: pd.DataFrame, model: AuditModel, threshold: float = DEFAULT_THRESHOLD, batch: int = 8,
                progress: bool = True, fold: Optional[int] = None) -> List[dict]:
    """One evidence row per chip of ``index`` (a :func:`cloudkd.data.chips.load_index` table with labels), each
    chip read once and predicted in batches."""
    import torch

    from ..data.chips import read_chip, read_label
    from ..data.normalise import normalise

    rows = []
    starts = range(0, len(index), batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"audit ({model.kind})", unit="batch")
    for s in starts:
        part = index.iloc[s:s + batch]
        first = read_chip(part["features"].iloc[0])
        refl = np.stack([first] + [read_chip(f, shape=first.shape[1:]) for f in part["features"].iloc[1:]])
        labels = [read_label(p, shape=refl.shape[2:]) for p in part["label"]]
        with torch.no_grad():
            logits = model.logits(torch.from_numpy(normalise(refl)))
        prob = probabilities_from_logits(logits)[:, 0]
        for (_, r), x, lab, p in zip(part.iterrows(), refl, labels, prob):
            rows.append({"chip_id": r["chip_id"], "location": r.get("location", ""), "fold": fold,
                         **chip_evidence(x, lab, p, threshold)})
    return rows


def audit_out_of_fold(index: pd.DataFrame, folds: pd.DataFrame, models: Dict[int, AuditModel],
                      threshold: float = DEFAULT_THRESHOLD, batch: int = 8) -> List[dict]:
    """Evidence rows of every chip of ``index``, each judged by the model of its fold (``models``: fold -> model
    trained without it); chips a folds file left out (fold -1) were in no model's training and are judged by the
    first fold's model (as :func:`contact_sheet` shows them)."""
    from ..data.folds import split_by_fold

    rows = []
    for k, m in models.items():
        rows += audit_chips(split_by_fold(index, folds, k)[1], m, threshold, batch, progress=False, fold=k)
    fold_of = folds.set_index("chip_id")["fold"]
    left_out = index[index["chip_id"].map(fold_of) < 0]
    if len(left_out):
        rows += audit_chips(left_out, next(iter(models.values())), threshold, batch, progress=False, fold=-1)
    return rows


def rank(rows: Sequence[dict]) -> pd.DataFrame:
    """The audit table: most suspicious first (ties by chip id), with a 1-based ``rank``."""
    df = pd.DataFrame(list(rows))
    df = df.sort_values(["suspicion", "chip_id"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    if df["fold"].isna().all():
        df = df.drop(columns="fold")
    return df[[c for c in COLUMNS if c in df.columns]]


def average_precision(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Average precision of a ranking by ``scores`` (higher first) for the ``positive`` items (e.g. injected
    noisy labels): the mean of the precision at the rank of each positive."""
    s = np.asarray(scores, float)
    pos = np.asarray(positive, bool)
    if not pos.any():
        raise ValueError("average precision needs at least one positive")
    order = np.argsort(-s, kind="mergesort")
    hits = pos[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def contact_sheet(table: pd.DataFrame, index: pd.DataFrame, model: AuditModel, path: os.PathLike | str,
                  top: int = 16, threshold: float = DEFAULT_THRESHOLD, models_by_fold: Optional[Dict] = None) -> Path:
    """A PNG of the ``top`` most suspicious chips for human review: true colour, label, model mask (the model of
    each chip's fold when ``models_by_fold`` is given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ..common.viz import save_figure, true_colour
    from ..data.chips import read_chip, read_label
    from ..data.normalise import normalise

    rows = table.head(top)
    by_id = index.set_index("chip_id")
    per_row = 2
    n_rows = max(1, int(np.ceil(len(rows) / per_row)))
    fig, axes = plt.subplots(n_rows, 3 * per_row, figsize=(3 * per_row * 2.1, n_rows * 2.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (_, r) in enumerate(rows.iterrows()):
        refl = read_chip(by_id.loc[r["chip_id"], "features"])
        lab = read_label(by_id.loc[r["chip_id"], "label"])
        m = model
        if models_by_fold is not None and "fold" in r and not pd.isna(r["fold"]):
            m = models_by_fold.get(int(r["fold"]), model)  # fold -1 (left out of every fold): ``model``
        with torch.no_grad():
            z = m.logits(torch.from_numpy(normalise(refl[None])))
        z = z.detach().cpu().numpy() if hasattr(z, "detach") else np.asarray(z)
        pred = masks_from_logits(z, threshold, nodata_mask(refl[None]))[0]
        row, col = divmod(i, per_row)
        a = axes[row, 3 * col:3 * col + 3]
        a[0].imshow(true_colour(refl))
        a[0].set_title(f"#{r['rank']} {r['chip_id']} ({r['location']})", fontsize=7)
        a[1].imshow(lab, cmap="gray", vmin=0, vmax=1)
        a[1].set_title(f"label {100 * r['label_fraction']:.0f}%  susp {r['suspicion']:.2f}", fontsize=7)
        a[2].imshow(pred, cmap="gray", vmin=0, vmax=1)
        a[2].set_title(f"model {100 * r['pred_fraction']:.0f}%  IoU {r['label_iou']:.2f}", fontsize=7)
    fig.suptitle(f"cloudkd audit: the {len(rows)} most suspicious labels (RGB | label | model)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save_figure(fig, path)


def write_exclude(table: pd.DataFrame, path: os.PathLike | str, above: float, source: str) -> int:
    """Write the plain list of chip ids with suspicion above ``above`` (the format ``--exclude`` reads)."""
    from ..common.io import atomic_write

    ids = table.loc[table["suspicion"] > above, "chip_id"].tolist()
    text = f"# cloudkd evaluate audit: {len(ids)} chip(s) with suspicion > {above} ({source})\n" + \
        "".join(f"{c}\n" for c in ids)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
    return len(ids)


def labels_fingerprint(data: os.PathLike | str, files: Sequence[Optional[os.PathLike | str]] = ()) -> str:
    """sha256 of what a fold model learns from besides its config: every label of ``data``'s training split (chip
    id and bytes) and the bytes of ``files`` (the folds CSV, an exclusion list). A label rewritten in place, even
    with its old size and time, changes it."""
    import hashlib

    from ..data.chips import load_index
    from ..data.roots import resolve_split

    index = load_index(resolve_split(data, "train"), require_labels=True)
    h = hashlib.sha256()
    for cid, path in sorted(zip(index["chip_id"], index["label"])):
        try:
            body = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read the label ({exc.strerror or exc})") from None
        h.update(f"{cid}\0{len(body)}\0".encode())
        h.update(body)
    for f in files:
        if f is not None:
            body = Path(f).read_bytes()
            h.update(f"{Path(f).name}\0{len(body)}\0".encode())
            h.update(body)
    return h.hexdigest()


def train_fold_models(data: os.PathLike | str, folds_csv: os.PathLike | str, out: os.PathLike | str,
                      base: "object", log=print) -> Dict[int, Path]:
    """Out of fold: for every fold k of ``folds_csv``, a student trained on the other folds (``base``, a
    :class:`cloudkd.student.config.TrainConfig` whose data / out / folds / val_fold are set here) in
    ``out/fold{k}``; a finished run with the same config, trained on the same labels and folds
    (:func:`labels_fingerprint`), is reused, any other is trained again. Fold k's labels choose the best epoch only
    (validation); they are never trained on. ``log`` gets a line per fold and per epoch of its training."""
    from dataclasses import asdict, replace

    from ..data.folds import read_folds
    from ..student.train import fit

    folds = sorted(int(f) for f in set(read_folds(folds_csv)["fold"]) if int(f) >= 0)
    fingerprint = labels_fingerprint(data, [folds_csv, getattr(base, "exclude", None)])
    runs = {}
    for i, k in enumerate(folds, 1):
        run = Path(out) / f"fold{k}"
        cfg = replace(base, data=str(data), out=str(run), folds=str(folds_csv), val_fold=k, progress=False)
        stamp = run / "audit_fold.json"
        want = {k2: v for k2, v in asdict(cfg).items() if k2 not in ("progress", "resume")}
        want["labels_sha256"] = fingerprint
        try:
            have = json.loads(stamp.read_text()) if stamp.is_file() else None
        except ValueError:
            have = None
        name = f"fold {k} ({i} of {len(folds)})"
        if have == want and (run / "student.pt").is_file():
            log(f"{name}: reusing {run}")
        else:
            if have is not None and have.get("labels_sha256") not in (None, fingerprint):
                log(f"{name}: the labels or folds changed since {run} was trained; training it again")
            t0 = time.perf_counter()
            log(f"{name}: training {cfg.model} on the other folds -> {run}")
            stamp.unlink(missing_ok=True)  # a training that fails leaves no stamp to reuse
            fit(cfg, log=lambda line, name=name: log(f"{name}: {line}"))  # a line per epoch
            stamp.write_text(json.dumps(want, indent=2))
            log(f"{name}: trained in {time.perf_counter() - t0:.0f} s")
        runs[k] = run
    return runs
