"""``cloudkd bench``: models side by side on the same chips with the same threads.

Rows: named models (``models``: row name -> path), each anything :func:`cloudkd.student.predictor.load_predictor`
loads (a student run, its student.pt or a .ckpt, an .onnx file, an nnU-Net work folder) or a thresholding model
(:mod:`cloudkd.baselines.threshold`'s JSON); the speed reference (unet-s int8, see REFERENCE) and the real-trained
peer ukis-csmask (PEER, optional) are rows of their own. :func:`demo_models` lists the models ``make demo`` left
(thresholding, the nnU-Net teacher, the smp U-Net/ResNet-34 baseline, the student in PyTorch, ONNX fp32 and ONNX
int8). Each row runs in its own fresh process (so its peak resident memory is its own) on the same held-out chips,
preloaded in memory (reading is not timed):

* latency: ``n_latency`` chips one at a time after one warm-up chip -> median and p90 ms/chip;
* throughput and quality: every chip in batches of ``batch`` -> chips/s and the global Jaccard of the masks
  against the labels (the leaderboard metric).

Columns: params, bytes (weights on disk), MACs per 512x512 chip, median and p90 ms/chip, chips/s, peak RSS
(VmHWM of the worker process), global Jaccard.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..common.errors import DataError
from ..common.infer import DEFAULT_THRESHOLD

#: the speed reference kept in every run: today's unet-s as int8 ONNX (fixed random weights: its speed, not its
#: masks, is what it is for), so speed-ups are ratios measured side by side, whatever the machine's drift
REFERENCE = "reference_unet_s_int8"
#: the row of the real-trained peer ukis-csmask (:func:`peer_model`)
PEER = "csmask_peer"


def reference_model(out: os.PathLike | str, calib_features: os.PathLike | str, n_calib: int = 4) -> Path:
    """Write (or reuse) the reference: unet-s with seed-0 weights, exported and quantised like a student."""
    import torch

    from ..data.normalise import normalise
    from ..student.unet import from_preset
    from .export import export_onnx, load_chips, quantize_int8

    out = Path(out)
    q = out / "reference_unet_s_int8.onnx"
    if q.is_file():
        return q
    torch.manual_seed(0)
    fp32 = export_onnx(from_preset("unet-s").eval(), out / "reference_unet_s_fp32.onnx", dynamic=True)
    return quantize_int8(fp32, q, [normalise(r) for r in load_chips(calib_features, n_calib)])


def machine_peak(threads: int, seconds: float = 1.0) -> Dict[str, float]:
    """Measured peak multiply-accumulate rates of this machine with ``threads`` threads (G MAC/s): ``fp32`` (a
    1024x1024 torch matmul) and ``int8`` (a 1024x1024 uint8 x int8 MatMulInteger in ONNX Runtime, the kernel
    family of the int8 models)."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from ..common.onnx import ort_session

    n = 1024
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)

    def rate(step) -> float:
        step()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            reps += 1
        return n ** 3 * reps / (time.perf_counter() - t0) / 1e9

    fp32 = rate(lambda: torch.mm(a, b))
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "peak",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        initializer=[numpy_helper.from_array(rng.integers(-128, 128, (n, n)).astype(np.int8), "w")])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peak.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        sess = ort_session(path, threads)
        x = rng.integers(0, 256, (n, n)).astype(np.uint8)
        int8 = rate(lambda: sess.run(None, {"x": x}))
    return {"fp32": fp32, "int8": int8}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def parse_model(spec: str) -> Tuple[str, str]:
    """A row ``NAME=PATH``, or ``PATH`` named by its file name without suffix (its folder's name for a folder) ->
    (name, path)."""
    name, sep, path = spec.partition("=")
    if sep and path and _NAME.fullmatch(name):
        return name, path
    p = Path(spec)
    return (p.stem if p.is_file() else p.name) or spec, spec


def row_kind(name: str, path: os.PathLike | str) -> str:
    """How the row ``name`` runs ``path``: ``reference`` (:data:`REFERENCE`), ``peer`` (:data:`PEER`),
    ``thresholding`` (a threshold model's JSON), or the :func:`cloudkd.student.predictor.model_kind` of the path
    (``student``, ``onnx``, ``nnunet``). A path that is none of them: a one-line DataError naming it."""
    if name == REFERENCE:
        return "reference"
    if name == PEER:
        return "peer"
    p = Path(path)
    if p.suffix == ".json" and p.name != "student.json" and p.is_file():
        from ..baselines.threshold import ThresholdModel

        ThresholdModel.load(p)  # a threshold model, or one line naming the file
        return "thresholding"
    from ..student.predictor import model_kind

    return model_kind(p)


def _export_artefact(path: Path) -> Optional[Tuple[str, dict]]:
    """(key, entry) of the ONNX file ``path`` in the export.json beside it (``cloudkd onboard export``), or None."""
    try:
        artefacts = json.loads((path.parent / "export.json").read_text())["artefacts"]
        return next((k, a) for k, a in artefacts.items() if Path(a["path"]).name == path.name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None


def _load(kind: str, path: str, threads: int, threshold: Optional[float] = None,
          dilate: Optional[int] = None) -> Tuple[Callable, dict]:
    """(predict(refl (N,4,H,W) float32) -> masks (N,H,W), {params, bytes, macs, int8, threshold, dilate}) of a row
    of :func:`row_kind` ``kind``. The models' masks come from the one prediction rule at ``threshold`` and
    ``dilate`` (None: the model's recorded ones, :func:`cloudkd.student.runs.recorded_rule`; nodata pixels
    clear)."""
    import torch

    from ..common.infer import clear_nodata, masks_from_logits, nodata_mask
    from ..data.normalise import normalise
    from ..student.predictor import load_predictor

    torch.set_num_threads(threads)
    rule = DEFAULT_THRESHOLD if threshold is None else threshold  # reported: these two rows have rules of their own
    if kind == "thresholding":
        from ..baselines.threshold import ThresholdModel

        t = ThresholdModel.load(path)
        return (lambda refl: np.stack([t.predict(r) for r in refl]) > 0), \
            {"params": 2, "bytes": Path(path).stat().st_size, "macs": 0, "int8": False, "threshold": rule,
             "dilate": 0}
    if kind == "peer":
        from ..teacher import peer

        def masks(refl):  # the peer's own rule, nodata pixels clear
            return clear_nodata(np.stack([peer.predict_chip(r, threads) for r in refl]), nodata_mask(refl))

        return masks, {"params": peer.params(), "bytes": peer.model_file().stat().st_size, "macs": 0,
                       "int8": False, "threshold": rule, "dilate": 0}
    m = load_predictor(path, threads, kind="onnx" if kind == "reference" else kind)
    threshold = m.threshold if threshold is None else threshold
    dilate = m.dilate if dilate is None else dilate

    def predict(refl):  # the one prediction rule at ``threshold`` and ``dilate``, nodata pixels clear
        return masks_from_logits(m.logits(normalise(refl)), threshold, nodata_mask(refl), dilate)

    info = {"params": m.params, "bytes": m.bytes, "macs": m.macs, "int8": False, "threshold": threshold,
            "dilate": dilate}
    if kind == "reference":  # fixed random weights of today's unet-s, quantised
        from ..common.sizes import count_macs, count_params
        from ..student.unet import from_preset

        ref = from_preset("unet-s")
        info.update(params=count_params(ref), macs=count_macs(ref, 512), int8=True)
    elif kind == "onnx":  # what ``cloudkd onboard export`` recorded of it (an ONNX file alone tells neither)
        key, art = _export_artefact(Path(path)) or ("", {})
        info.update(params=art.get("params"), macs=art.get("macs"), int8=key.endswith("int8"))
    return predict, info


def run_worker(name: str, kind: str, path: str, features: str, labels: str, threads: int, batch: int,
               n_latency: int, limit: Optional[int] = None, threshold: Optional[float] = None,
               dilate: Optional[int] = None) -> dict:
    """One row (``kind``: :func:`row_kind`), measured in this process (``threshold`` / ``dilate`` None: the
    model's recorded ones)."""
    from ..data.chips import list_chip_ids, read_chip, read_label
    from ..common.metrics import Confusion, confusion
    from ..common.sizes import vm_hwm_mb

    ids = list_chip_ids(features)[:limit] if limit else list_chip_ids(features)
    refl = np.stack([read_chip(Path(features) / c) for c in ids])
    labs = np.stack([read_label(Path(labels) / f"{c}.tif") for c in ids])
    predict, info = _load(kind, path, threads, threshold, dilate)
    predict(refl[:1])  # warm-up
    lat = []
    for i in range(min(n_latency, len(ids))):
        t = time.perf_counter()
        predict(refl[i:i + 1])
        lat.append(1000 * (time.perf_counter() - t))
    conf = Confusion()
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        masks = predict(refl[i:i + batch])
        conf += confusion(masks, labs[i:i + batch] > 0)
    seconds = time.perf_counter() - t0
    return {"name": name, "kind": kind, "path": path, "params": info["params"], "bytes": info["bytes"],
            "macs": info["macs"], "int8": info["int8"], "ms_per_chip_median": float(np.median(lat)),
            "ms_per_chip_p90": float(np.percentile(lat, 90)), "chips_per_s": len(ids) / seconds,
            "peak_rss_mb": vm_hwm_mb(), "jaccard": conf.jaccard(), "n_chips": len(ids), "threads": threads,
            "batch": batch, "threshold": info["threshold"], "dilate": info.get("dilate")}


def bench(models: Dict[str, str], features: str, labels: str, threads: int = 2, batch: int = 8,
          n_latency: int = 16, limit: Optional[int] = None, progress: bool = True,
          threshold: Optional[float] = None, peak: bool = True, dilate: Optional[int] = None) -> List[dict]:
    """Run every row of ``models`` (row name -> path, see :func:`row_kind`) in its own process; rows in the order
    given, the speed reference (:data:`REFERENCE`) first. ``threshold`` / ``dilate`` None: each model's recorded
    prediction rule.

    With the reference in ``models`` every row gets ``x_reference`` (its chips/s over the reference's, measured
    in the same run); with ``peak`` every row gets ``gmacs_per_s`` (MACs per chip x chips/s) and ``peak_share``
    (that over the machine's measured peak: int8 rows against the int8 peak, the others against fp32)."""
    rows = []
    for name in sorted(models, key=lambda n: n != REFERENCE):  # stable: the others keep their order
        args = json.dumps({"name": name, "kind": row_kind(name, models[name]), "path": str(models[name]),
                           "features": str(features), "labels": str(labels), "threads": threads, "batch": batch,
                           "n_latency": n_latency, "limit": limit, "threshold": threshold, "dilate": dilate})
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        p = subprocess.run([sys.executable, "-m", "cloudkd.onboard.bench", args], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"bench worker for {name} failed:\n{p.stderr[-3000:]}")
        row = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(row)
        if progress:
            print(f"  {name}: {row['ms_per_chip_median']:.1f} ms/chip median, {row['chips_per_s']:.2f} chips/s, "
                  + (f"Jaccard {row['jaccard']:.4f}" if name != REFERENCE else "(speed reference)"), flush=True)
    ref = next((r for r in rows if r["name"] == REFERENCE), None)
    peaks = None
    if peak:
        p = subprocess.run([sys.executable, "-m", "cloudkd.onboard.bench", json.dumps({"peak": threads})],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if p.returncode != 0:
            raise RuntimeError(f"bench peak measurement failed:\n{p.stderr[-3000:]}")
        peaks = json.loads(p.stdout.strip().splitlines()[-1])
    for r in rows:
        if r["name"] == REFERENCE:
            r["jaccard"] = None  # random weights: a speed reference only
        r["x_reference"] = r["chips_per_s"] / ref["chips_per_s"] if ref else None
        r["gmacs_per_s"] = r["macs"] * r["chips_per_s"] / 1e9 if r["macs"] else None
        if peaks is not None:
            kind = "int8" if r["int8"] else "fp32"
            r["peak_gmacs_per_s"] = peaks[kind]
            r["peak_share"] = r["gmacs_per_s"] / peaks[kind] if r["gmacs_per_s"] else None
    return rows


def peer_model(log=print) -> Optional[Path]:
    """The model file of the real-trained peer ukis-csmask (the :data:`PEER` row) when it is installed; else None,
    and ``log`` says how to install it."""
    from ..teacher import peer

    if peer.available():
        return peer.model_file()
    log(f"skipping {PEER}: {peer.NAME} is not installed ({peer.INSTALL})")
    return None


# ---------------------------------------------------------------------------------------------------------------
# The demo's models: a convenience for ``cloudkd onboard bench --demo`` (the README's table)
# ---------------------------------------------------------------------------------------------------------------
#: where ``make demo`` leaves its models and data, and where the README's bench writes (``onboard bench`` without
#: ``--model``)
DEMO_DIR, DEMO_DATA, DEMO_OUT = Path("runs/demo"), Path("data/generated/demo"), Path("runs/bench")
#: the rows of the demo's models, in table order (:func:`demo_models`)
DEMO_ROWS = ("thresholding", "nnunet_teacher", "smp_resnet34", "student_torch", "student_onnx_fp32",
             "student_onnx_int8")


def _export_of(student: Path, export_dir: Path) -> None:
    """Refuse (DataError) an ``export_dir`` whose export.json says it was made from another run than ``student``."""
    try:
        made_from = json.loads((export_dir / "export.json").read_text())["artefacts"]["pytorch"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        made_from = None
    if made_from and os.path.realpath(Path(made_from).parent) != os.path.realpath(student):
        raise DataError(f"{export_dir}: holds the export of {Path(made_from).parent}, not of the student {student}; "
                        f"give --export-dir a new folder or that student's own export")


def demo_models(split, demo_dir: Path, student: Optional[Path] = None, resnet34: Optional[Path] = None,
                export_dir: Optional[Path] = None, threshold: Optional[float] = None, log=print,
                dilate: Optional[int] = None) -> Dict[str, Path]:
    """The rows of the models ``make demo`` left in ``demo_dir`` (row name -> path, those present: thresholding,
    the nnU-Net teacher, the smp ResNet-34, the student in PyTorch, ONNX fp32 and int8), with the student exported
    to ONNX first when its export is missing (calibrated on the training split of ``split``'s root)."""
    from ..data.roots import resolve_split
    from .export import export

    student = student or demo_dir / "student"
    resnet34 = resnet34 or demo_dir / "distill" / "resnet34"
    export_dir = export_dir or demo_dir / "export"
    if (student / "student.json").is_file() and (export_dir / "export.json").is_file():
        _export_of(student, export_dir)  # another model's export is neither benchmarked as this one nor replaced
    if (student / "student.json").is_file() and not (export_dir / "model_int8.onnx").is_file():
        log(f"exporting {student} -> {export_dir}")
        train = resolve_split(split.root, "train").features_dir if (split.root / "train_features").is_dir() else None
        # the demo's own export (a folder cloudkd did not write: refused)
        export(student, export_dir, calib=train, heldout=split.features_dir if train else None, int8=bool(train),
               threshold=threshold, dilate=dilate, force=True)
    models = dict(zip(DEMO_ROWS, (demo_dir / "threshold.json", demo_dir / "nnunet", resnet34, student,
                                  export_dir / "model_fp32.onnx", export_dir / "model_int8.onnx")))
    for k, v in models.items():
        if not Path(v).exists():
            log(f"skipping {k}: {v} not found")
    return {k: v for k, v in models.items() if Path(v).exists()}


COLUMNS = ["name", "params", "bytes", "macs", "ms_per_chip_median", "ms_per_chip_p90", "chips_per_s",
           "x_reference", "gmacs_per_s", "peak_share", "peak_rss_mb", "jaccard"]


def to_markdown(rows: List[dict]) -> str:
    def fmt(c, v):
        if v is None:
            return "-"
        if c == "x_reference":
            return f"{v:.2f}x"
        if c == "peak_share":
            return f"{100 * v:.0f} %"
        if c == "macs":
            return f"{v / 1e9:.2f} G" if v else "-"
        if c in ("params", "bytes"):
            return f"{v:,}"
        if c == "jaccard":
            return f"{v:.4f}"
        if isinstance(v, float):
            return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
        return str(v)

    head = ["method", "params", "bytes", "MACs/chip", "median ms/chip", "p90 ms/chip", "chips/s", "vs reference",
            "G MAC/s", "of peak", "peak RSS MB", "Jaccard"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c, r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: List[dict], path: os.PathLike | str) -> Path:
    import matplotlib.pyplot as plt  # the backend stays the user's: save_figure writes the file and closes it

    from ..common.viz import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(r for r in rows if r["jaccard"] is not None):  # the speed reference has no Jaccard
        for ax, x in zip(axes, (max(r["bytes"], 1), r["ms_per_chip_median"])):
            ax.scatter(x, r["jaccard"], s=40)
            ax.annotate(r["name"], (x, r["jaccard"]), fontsize=8, xytext=(4, 4 - 11 * (i % 3)),
                        textcoords="offset points")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("model size, bytes on disk (log)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("median ms per 512x512 chip (log)")
    for ax in axes:
        ax.set_ylabel("global Jaccard (held-out chips)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    if "peak" in a:
        print(json.dumps(machine_peak(int(a["peak"]))))
        sys.exit(0)
    print(json.dumps(run_worker(a["name"], a["kind"], a["path"], a["features"], a["labels"], a["threads"],
                                a["batch"], a["n_latency"], a.get("limit"), a.get("threshold"), a.get("dilate"))))
