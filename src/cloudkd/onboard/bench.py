"""``cloudkd bench``: every method side by side on the same chips with the same threads.

Rows: the speed reference (unet-s int8, see REFERENCE), thresholding, the nnU-Net teacher, the real-trained peer
ukis-csmask when it is installed (optional), the smp U-Net/ResNet-34 baseline, the student in PyTorch, ONNX fp32
and ONNX int8. Each method runs in its own fresh process (so its peak resident memory is its own) on the same
held-out chips, preloaded in memory (reading is not timed):

* latency: ``n_latency`` chips one at a time after one warm-up chip -> median and p90 ms/chip;
* throughput and quality: every chip in batches of ``batch`` -> chips/s and the global Jaccard of the masks
  against the labels (the leaderboard metric).

Columns: params, bytes (weights on disk), MACs per 512x512 chip, median and p90 ms/chip, chips/s, peak RSS
(VmHWM of the worker process), global Jaccard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..common.errors import DataError
from ..common.infer import DEFAULT_THRESHOLD

METHODS = ("reference_unet_s_int8", "thresholding", "nnunet_teacher", "csmask_peer", "smp_resnet34", "student_torch",
           "student_onnx_fp32", "student_onnx_int8")
#: the speed reference kept in every run: today's unet-s as int8 ONNX (fixed random weights: its speed, not its
#: masks, is what it is for), so speed-ups are ratios measured side by side, whatever the machine's drift
REFERENCE = "reference_unet_s_int8"


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


def method_threshold(method: str, path: str) -> float:
    """The threshold a method's model recorded (a student run's, an exported model's: :func:`recorded_threshold`);
    the rule's default for the others (the teacher, the speed reference)."""
    if method in ("smp_resnet34", "student_torch", "student_onnx_fp32", "student_onnx_int8"):
        from ..student.runs import recorded_threshold

        return recorded_threshold(path)
    return DEFAULT_THRESHOLD


def _load(method: str, path: str, threads: int, threshold: float = DEFAULT_THRESHOLD):
    """(predict(refl (N,4,H,W) float32) -> masks (N,H,W), params, bytes, macs); the models' masks come from the
    one prediction rule at ``threshold`` (nodata pixels clear)."""
    import torch

    from ..common.infer import clear_nodata, masks_from_logits, nodata_mask
    from ..data.normalise import normalise
    from ..student.predictor import load_predictor

    torch.set_num_threads(threads)
    if method == "thresholding":
        from ..baselines.threshold import ThresholdModel

        m = ThresholdModel.load(path)
        return (lambda refl: np.stack([m.predict(r) for r in refl]) > 0), 2, Path(path).stat().st_size, 0
    if method == "csmask_peer":
        from ..teacher import peer

        return (lambda refl: clear_nodata(np.stack([peer.predict_chip(r, threads) for r in refl]),
                                           nodata_mask(refl))), peer.params(), peer.model_file().stat().st_size, 0
    kinds = {"nnunet_teacher": "nnunet", "smp_resnet34": "student", "student_torch": "student", REFERENCE: "onnx",
             "student_onnx_fp32": "onnx", "student_onnx_int8": "onnx"}
    if method not in kinds:
        raise ValueError(f"unknown method {method!r}")
    m = load_predictor(path, threads, kind=kinds[method])

    def predict(refl):  # the one prediction rule at ``threshold``, nodata pixels clear
        return masks_from_logits(m.logits(normalise(refl)), threshold, nodata_mask(refl))

    if method == REFERENCE:  # fixed random weights of today's unet-s
        from ..common.sizes import count_macs, count_params
        from ..student.unet import from_preset

        ref = from_preset("unet-s")
        return predict, count_params(ref), m.bytes, count_macs(ref, 512)
    if m.kind == "onnx":
        info = json.loads((Path(path).parent / "export.json").read_text())
        art = info["artefacts"]["onnx_int8" if method.endswith("int8") else "onnx_fp32"]
        return predict, art["params"], m.bytes, art["macs"]
    return predict, m.params, m.bytes, (0 if m.macs is None else m.macs)


def run_worker(method: str, path: str, features: str, labels: str, threads: int, batch: int, n_latency: int,
               limit: Optional[int] = None, threshold: Optional[float] = None) -> dict:
    """One method, measured in this process (``threshold`` None: the model's recorded one, see
    :func:`method_threshold`)."""
    from ..data.chips import list_chip_ids, read_chip, read_label
    from ..common.metrics import Confusion, confusion
    from ..common.sizes import vm_hwm_mb

    ids = list_chip_ids(features)[:limit] if limit else list_chip_ids(features)
    refl = np.stack([read_chip(Path(features) / c) for c in ids])
    labs = np.stack([read_label(Path(labels) / f"{c}.tif") for c in ids])
    threshold = method_threshold(method, path) if threshold is None else threshold
    predict, params, nbytes, macs = _load(method, path, threads, threshold)
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
    return {"name": method, "path": path, "params": params, "bytes": nbytes, "macs": macs,
            "ms_per_chip_median": float(np.median(lat)), "ms_per_chip_p90": float(np.percentile(lat, 90)),
            "chips_per_s": len(ids) / seconds, "peak_rss_mb": vm_hwm_mb(), "jaccard": conf.jaccard(),
            "n_chips": len(ids), "threads": threads, "batch": batch, "threshold": threshold}


def bench(models: Dict[str, str], features: str, labels: str, threads: int = 2, batch: int = 8,
          n_latency: int = 16, limit: Optional[int] = None, progress: bool = True,
          threshold: Optional[float] = None, peak: bool = True) -> List[dict]:
    """Run every method of ``models`` (method -> path) in its own process; rows in METHODS order. ``threshold``
    None: each model's recorded threshold (:func:`method_threshold`).

    With the reference in ``models`` every row gets ``x_reference`` (its chips/s over the reference's, measured
    in the same run); with ``peak`` every row gets ``gmacs_per_s`` (MACs per chip x chips/s) and ``peak_share``
    (that over the machine's measured peak: int8 rows against the int8 peak, the others against fp32)."""
    rows = []
    for method in [m for m in METHODS if m in models]:
        args = json.dumps({"method": method, "path": str(models[method]), "features": str(features),
                           "labels": str(labels), "threads": threads, "batch": batch, "n_latency": n_latency,
                           "limit": limit, "threshold": threshold})
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        p = subprocess.run([sys.executable, "-m", "cloudkd.onboard.bench", args], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"bench worker for {method} failed:\n{p.stderr[-3000:]}")
        row = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(row)
        if progress:
            print(f"  {method}: {row['ms_per_chip_median']:.1f} ms/chip median, {row['chips_per_s']:.2f} chips/s, "
                  + (f"Jaccard {row['jaccard']:.4f}" if method != REFERENCE else "(speed reference)"), flush=True)
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
            kind = "int8" if r["name"].endswith("int8") else "fp32"
            r["peak_gmacs_per_s"] = peaks[kind]
            r["peak_share"] = r["gmacs_per_s"] / peaks[kind] if r["gmacs_per_s"] else None
    return rows


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
                export_dir: Optional[Path] = None, threshold: Optional[float] = None, peer: bool = True,
                log=print) -> Dict[str, Path]:
    """The models ``make demo`` left in ``demo_dir`` (method -> path, those present), with the student exported to
    ONNX first when its export is missing (calibrated on the training split of ``split``'s root), the speed
    reference (made once in DEMO/bench_reference), and with ``peer`` the ukis-csmask peer when it is installed."""
    from ..data.roots import resolve_split
    from .export import export

    student = student or demo_dir / "student"
    resnet34 = resnet34 or demo_dir / "distill" / "resnet34"
    export_dir = export_dir or demo_dir / "export"
    models = {"thresholding": demo_dir / "threshold.json", "nnunet_teacher": demo_dir / "nnunet",
              "smp_resnet34": resnet34, "student_torch": student}
    if (student / "student.json").is_file() and (export_dir / "export.json").is_file():
        _export_of(student, export_dir)  # another model's export is neither benchmarked as this one nor replaced
    if (student / "student.json").is_file() and not (export_dir / "model_int8.onnx").is_file():
        log(f"exporting {student} -> {export_dir}")
        train = resolve_split(split.root, "train").features_dir if (split.root / "train_features").is_dir() else None
        export(student, export_dir, calib=train, heldout=split.features_dir if train else None, int8=bool(train),
               threshold=threshold, force=True)  # the demo's own export (a folder cloudkd did not write: refused)
    models["student_onnx_fp32"] = export_dir / "model_fp32.onnx"
    models["student_onnx_int8"] = export_dir / "model_int8.onnx"
    models[REFERENCE] = reference_model(export_dir.parent / "bench_reference", split.features_dir)
    if peer:
        from ..teacher import peer as peer_mod

        if peer_mod.available():
            models["csmask_peer"] = peer_mod.model_file()
        else:
            log(f"skipping csmask_peer: {peer_mod.NAME} is not installed ({peer_mod.INSTALL})")
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
    print(json.dumps(run_worker(a["method"], a["path"], a["features"], a["labels"], a["threads"], a["batch"],
                                a["n_latency"], a.get("limit"), a.get("threshold"))))
