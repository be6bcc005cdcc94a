"""``cloudkd export``: a trained student (or smp baseline) as deployable ONNX artefacts, checked and costed.

Writes into ``out``:

* ``model_fp32.onnx``: dynamic batch and size (``x``: (N, 4, H, W) normalised input -> ``logits``: (N, 1, H, W));
* ``model_fp32_b1.onnx``: fixed batch 1 and chip size (what a flight computer would load);
* ``model_int8.onnx``: post-training static quantisation with ONNX Runtime (QDQ, int8 per-channel weights,
  uint8 activations, MinMax calibration on a folder of chips);
* ``export.json``: the checks and the cost report.

Every ONNX artefact carries its prediction rule in its metadata (``cloudkd_threshold`` and ``cloudkd_dilate``: the
run's recorded threshold and dilation unless others are given), which the commands that make masks with it take as
their default.

Checks on real inputs: the fp32 ONNX logits against PyTorch (max abs diff, mask agreement) and the int8 masks
against the fp32 masks on held-out chips (mask IoU; it must stay >= 0.98 or the command says so).
Costs per artefact: parameters, bytes on disk, multiply-accumulates per chip (convolutions and linear layers;
normalisation, activations and resampling are not counted) and the peak memory of one inference (resident
set growth of a fresh process running one chip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..common.errors import DataError
from ..common.infer import masks_from_logits, nodata_mask
from ..common.io import atomic_write
from ..common.metrics import confusion
from ..common.onnx import ort_logits, ort_session, stamp_rule
from ..common.sizes import count_macs, count_params  # noqa: F401  (count_macs: re-exported)
from ..data.chips import list_chip_ids, read_chip
from ..data.normalise import normalise

INT8_MIN_IOU = 0.98


def load_chips(features_dir: os.PathLike | str, n: Optional[int] = None, offset: int = 0) -> List[np.ndarray]:
    """Reflectance (4, H, W) float32 of the first ``n`` chips (sorted ids) after ``offset``."""
    ids = list_chip_ids(features_dir)[offset:]
    ids = ids[:n] if n else ids
    if not ids:
        raise DataError(f"{features_dir}: no chips to use")
    return [read_chip(Path(features_dir) / c) for c in ids]


def export_onnx(model: torch.nn.Module, path: os.PathLike | str, dynamic: bool = True, size: int = 512,
                opset: int = 17) -> Path:
    """ONNX with input ``x`` and output ``logits``; dynamic batch/height/width or fixed (1, 4, size, size)."""
    model = model.eval()
    axes = {"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}} if dynamic else None

    def write(tmp: Path) -> None:
        torch.onnx.export(model, torch.zeros(1, 4, size, size), str(tmp), input_names=["x"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)

    return atomic_write(path, write, suffix=".onnx")


class _Calib:
    """onnxruntime CalibrationDataReader over a list of normalised chips (one chip per batch)."""

    def __init__(self, chips: Sequence[np.ndarray], input_name: str = "x"):
        self._it = iter([{input_name: c[None].astype(np.float32)} for c in chips])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_int8(fp32: os.PathLike | str, out: os.PathLike | str, calib: Sequence[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calib, CalibrationDataReader):
        pass

    out = Path(out)
    pre = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        atomic_write(out, lambda tmp: quantize_static(
            str(pre), str(tmp), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax), suffix=".onnx")
    finally:
        pre.unlink(missing_ok=True)
    return out


_PEAK_SCRIPT = r"""
import json, math, sys
import numpy as np
from cloudkd.common.sizes import vm_hwm_mb
if math.isnan(vm_hwm_mb()):
    raise RuntimeError("no VmHWM in /proc/self/status")
kind, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((1, 4, size, size)).astype(np.float32)
if kind == "onnx":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.log_severity_level = 3
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {s.get_inputs()[0].name: x})
else:
    import torch
    torch.set_num_threads(1)
    from cloudkd.student.runs import load_student
    m = load_student(path)
    t = torch.from_numpy(x)
    def run():
        with torch.no_grad():
            m(t)
before = vm_hwm_mb()
run()
after = vm_hwm_mb()
print(json.dumps({"peak_rss_mb": round(after, 1), "inference_mb": round(after - before, 1)}))
"""


def peak_memory(kind: str, path: os.PathLike | str, size: int = 512) -> Dict[str, float]:
    """Peak resident memory of a fresh process that loads the model and runs one (1, 4, size, size) chip:
    ``peak_rss_mb`` (whole process) and ``inference_mb`` (growth during the inference itself)."""
    p = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, kind, str(path), str(size)], capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"peak-memory probe failed for {path}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


@dataclass
class ExportReport:
    out: Path
    artefacts: Dict[str, dict] = field(default_factory=dict)
    checks: Dict[str, float] = field(default_factory=dict)
    int8_ok: Optional[bool] = None
    threshold: Optional[float] = None  # the prediction rule's, recorded in every ONNX artefact
    dilate: int = 0  # the prediction rule's dilation (pixels), recorded in every ONNX artefact

    def to_json(self) -> dict:
        return {"out": str(self.out), "artefacts": self.artefacts, "checks": self.checks, "int8_ok": self.int8_ok,
                "int8_min_iou": INT8_MIN_IOU, "onboard_artefact": self.onboard_artefact, "threshold": self.threshold,
                "dilate": self.dilate}

    @property
    def onboard_artefact(self) -> str:
        """What a flight computer should load: the int8 model only when it passed its check against fp32 (mask
        IoU >= INT8_MIN_IOU), else the fixed-shape fp32 model."""
        return "model_int8.onnx" if self.int8_ok else "model_fp32_b1.onnx"


def export(checkpoint: os.PathLike | str, out: os.PathLike | str, calib: Optional[os.PathLike | str] = None,
           heldout: Optional[os.PathLike | str] = None, n_calib: int = 16, n_check: int = 8, size: int = 512,
           int8: bool = True, measure_memory: bool = True, threshold: Optional[float] = None,
           force: bool = False, dilate: Optional[int] = None) -> ExportReport:
    """Export, check and cost a trained model (see the module docstring). The masks of the checks come from the
    one prediction rule at ``threshold`` and ``dilate`` (None: the run's recorded ones; nodata pixels clear), the
    rule ``submission/main.py`` applies; the ONNX artefacts record it.

    ``calib``: chips for the int8 calibration (e.g. the training split's features); ``heldout``: other chips
    for the checks (default: ``calib`` chips after the calibration ones).

    The output policy: ``out`` is new, empty, or an export cloudkd wrote (replaced only with ``force``), apart
    from the run and the chips, and locked while it is written. The export is built beside ``out`` and takes its
    place only when it is complete: a failed export leaves nothing (no marker, no fp32 model) and an old export
    as it was.
    """
    from ..common.outputs import check_folder, folder_output, outputs_apart
    from ..common.infer import check_dilate, logit_threshold
    from ..student.runs import resolve_run, run_rule

    out = Path(out)
    run, info, state = resolve_run(checkpoint)
    rule = run_rule(info, str(run / "student.json"))
    threshold = rule[0] if threshold is None else float(threshold)
    dilate = rule[1] if dilate is None else dilate
    logit_threshold(threshold)
    check_dilate(dilate)
    outputs_apart([out], [checkpoint, run, calib, heldout])
    check_chip_counts(calib, heldout, n_calib)  # before any work
    check_folder(out, EXPORT_KIND, force)
    with folder_output(out, EXPORT_KIND, force) as build:
        return _export_into(build, run, info, state, calib, heldout, n_calib, n_check, size, int8, measure_memory,
                            threshold, dilate, final=out)


#: the kind of content of an export folder (the output policy's mark)
EXPORT_KIND = "onnx-export"


def check_chip_counts(calib: Optional[os.PathLike | str], heldout: Optional[os.PathLike | str],
                      n_calib: int) -> None:
    """Refuse (one line) an ``n_calib`` the ``calib`` chips cannot give: more than there are, or, without
    ``heldout``, all of them (the checks use the chips after the calibration ones)."""
    if calib is None:
        return
    n = len(list_chip_ids(calib))
    if n == 0:
        raise DataError(f"{calib}: no chips to calibrate on (--calib)")
    if heldout is not None:
        if n_calib > n:
            raise DataError(f"--n-calib {n_calib}: {calib} has only {n} chip(s); give --n-calib {n} or fewer")
    elif n_calib >= n:
        fix = f"--n-calib {n - 1} or fewer, or --heldout CHIPS" if n > 1 else "--heldout CHIPS"
        raise DataError(f"--n-calib {n_calib}: {calib} has only {n} chip(s), and the checks need chips after the "
                        f"calibration ones; give {fix}")


def _export_into(out: Path, run: Path, info: dict, state: dict, calib, heldout, n_calib: int, n_check: int, size: int,
                 int8: bool, measure_memory: bool, threshold: float, dilate: int = 0,
                 final: Optional[Path] = None) -> ExportReport:
    """Write the export into ``out`` (the build folder); the report names the artefacts where they will be once
    the build takes the place of ``final``."""
    from ..student.models import build_model

    model = build_model(info["model"], model_kwargs=info.get("model_kwargs"))
    model.load_state_dict(state)
    model.eval()
    params = count_params(model)
    macs = count_macs(model, size)
    rep = ExportReport(out, threshold=threshold, dilate=dilate)
    fp32 = stamp_rule(export_onnx(model, out / "model_fp32.onnx", dynamic=True, size=size), threshold, dilate)
    fixed = stamp_rule(export_onnx(model, out / "model_fp32_b1.onnx", dynamic=False, size=size), threshold, dilate)
    weights_bytes = sum(v.numel() * v.element_size() for v in state.values())
    rep.artefacts["pytorch"] = {"path": str(run / "student.pt"), "params": params, "macs": macs,
                                "bytes": (run / "student.pt").stat().st_size if (run / "student.pt").is_file()
                                else weights_bytes}
    rep.artefacts["onnx_fp32"] = {"path": str(fp32), "params": params, "macs": macs, "bytes": fp32.stat().st_size}
    rep.artefacts["onnx_fp32_b1"] = {"path": str(fixed), "params": params, "macs": macs,
                                     "bytes": fixed.stat().st_size}

    if calib is not None:
        calib_chips = [normalise(r) for r in load_chips(calib, n_calib)]
        check_refl = np.stack(load_chips(heldout, n_check) if heldout is not None
                              else load_chips(calib, n_check, n_calib))
        x = normalise(check_refl)
        nodata = nodata_mask(check_refl)

        def masks(logits):  # the one prediction rule, as main.py applies it
            return masks_from_logits(logits, threshold, nodata, dilate).astype(bool)

        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        sess = ort_session(fp32)
        got = ort_logits(sess, x)
        b1 = ort_session(fixed)
        got1 = np.concatenate([ort_logits(b1, c[None]) for c in x]) if x.shape[-1] == size else got
        rep.checks["threshold"] = threshold
        rep.checks["dilate"] = dilate
        rep.checks["onnx_fp32_max_abs_diff"] = float(np.abs(got - ref).max())
        rep.checks["onnx_fp32_b1_max_abs_diff"] = float(np.abs(got1 - ref).max())
        rep.checks["onnx_fp32_mask_agreement"] = float((masks(got) == masks(ref)).mean())
        rep.checks["n_check_chips"] = len(check_refl)
        if int8:
            q = stamp_rule(quantize_int8(fp32, out / "model_int8.onnx", calib_chips), threshold, dilate)
            qz = ort_logits(ort_session(q), x)
            iou = confusion(masks(qz), masks(got)).iou(empty=1.0)
            rep.checks["int8_vs_fp32_mask_iou"] = iou
            rep.checks["int8_vs_fp32_mask_agreement"] = float((masks(qz) == masks(got)).mean())
            rep.checks["int8_vs_fp32_max_abs_diff"] = float(np.abs(qz - got).max())
            rep.checks["n_calib_chips"] = len(calib_chips)
            rep.int8_ok = iou >= INT8_MIN_IOU
            rep.artefacts["onnx_int8"] = {"path": str(q), "params": params, "macs": macs, "bytes": q.stat().st_size}
    elif int8:
        raise DataError("int8 quantisation needs calibration chips (--calib FEATURES_DIR)")

    if measure_memory:
        for name, a in rep.artefacts.items():
            kind = "torch" if name == "pytorch" else "onnx"
            a.update(peak_memory(kind, run if kind == "torch" else a["path"], size))
    if final is not None:  # the paths the artefacts have once the build is swapped in
        rep.out = Path(final)
        for name, a in rep.artefacts.items():
            if name != "pytorch":
                a["path"] = str(Path(final) / Path(a["path"]).name)
    atomic_write(out / "export.json", lambda t: Path(t).write_text(json.dumps(rep.to_json(), indent=2)))
    return rep
