"""``cloudkd pack``: a trained model + the frozen ``submission/main.py`` -> submission.zip.

Zip layout (unzipped into /codeexecution by the runtime)::

    main.py                          submission/main.py of this repository, unchanged
    assets/config.json               model spec, threshold, dilation, flip TTA, batch size, chip size, provenance
    assets/model.pt                  the weights: a plain state dict (legacy torch.save format, loads in torch 1.8)
    assets/cloudkd_rt/__init__.py
    assets/cloudkd_rt/unet.py        = src/cloudkd/student/unet.py      (byte for byte)
    assets/cloudkd_rt/normalise.py   = src/cloudkd/data/normalise.py    (byte for byte)
    assets/cloudkd_rt/infer.py       = src/cloudkd/common/infer.py      (byte for byte)

Compact U-Nets need only torch in the runtime; smp models (``smp:Unet:resnet34``) are rebuilt with the
runtime's segmentation-models-pytorch.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..common.errors import DataError
from ..common.io import atomic_write
from ..student.runs import resolve_run, run_rule
from ..common.sizes import count_params

PKG = Path(__file__).resolve().parents[1]  # src/cloudkd
MAIN_PY = PKG.parents[1] / "submission" / "main.py"
#: library module -> name inside the zip's assets/cloudkd_rt package
RUNTIME_MODULES = {
    PKG / "student" / "unet.py": "unet.py",
    PKG / "data" / "normalise.py": "normalise.py",
    PKG / "common" / "infer.py": "infer.py",
}


@dataclass
class PackResult:
    zip_path: Path
    bytes: int
    params: int
    config: dict


def model_spec(info: dict, model: torch.nn.Module) -> dict:
    """How main.py rebuilds the network, from the run's model string."""
    from ..student.unet import CompactUNet

    if isinstance(model, CompactUNet):
        return {"arch": "compact_unet", "name": info["model"], "kwargs": model.config}
    if info["model"].startswith("smp:"):
        _, arch, encoder = info["model"].split(":")
        kw = {k: v for k, v in (info.get("model_kwargs") or {}).items() if k != "encoder_weights"}
        return {"arch": "smp", "name": arch, "encoder": encoder, "kwargs": kw}
    raise DataError(f"cannot pack model {info['model']!r}: main.py rebuilds compact U-Nets and smp models only")


def pack(checkpoint: os.PathLike | str, out: os.PathLike | str, threshold: Optional[float] = None, tta: bool = False,
         batch_size: int = 8, chip_size: int = 512, main_py: Optional[os.PathLike | str] = None,
         dilate: Optional[int] = None) -> PackResult:
    """Write the submission zip. ``threshold`` / ``dilate`` None: the run's recorded prediction rule
    (:func:`cloudkd.student.runs.run_rule`: the rule fitted on its validation chips, else its training threshold,
    the one its validation Jaccard was measured at, and no dilation; runs from before either was recorded: the
    rule's defaults)."""
    from ..common.infer import check_dilate, logit_threshold
    from ..student.models import build_model

    if threshold is not None:
        logit_threshold(threshold)  # validates the threshold before anything is read
    if dilate is not None:
        check_dilate(dilate)
    main_py = Path(main_py) if main_py else MAIN_PY
    if not main_py.is_file():
        raise DataError(f"{main_py}: submission main.py not found (pack runs from a cloudkd checkout)")
    run, info, state = resolve_run(checkpoint)
    rule = run_rule(info, str(run / "student.json"))  # the one answer to "the run's prediction rule"
    threshold = rule[0] if threshold is None else threshold
    dilate = rule[1] if dilate is None else dilate
    logit_threshold(threshold)
    model = build_model(info["model"], model_kwargs=info.get("model_kwargs"))
    model.load_state_dict(state)  # fails loudly on a mismatch, before anything is written
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    params = count_params(model)
    config = {"model": model_spec(info, model), "threshold": threshold, "dilate": dilate, "tta": tta,
              "batch_size": batch_size, "chip_size": chip_size, "params": params, "source_run": str(run),
              "val_jaccard": info.get("val_jaccard"), "teacher_mode": info.get("teacher_mode")}
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)  # the format every torch >= 1.0 reads

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.write(main_py, "main.py")
            z.writestr("assets/config.json", json.dumps(config, indent=2))
            z.writestr("assets/model.pt", buf.getvalue())
            z.writestr("assets/cloudkd_rt/__init__.py", '"""cloudkd runtime modules (copied by cloudkd pack)."""\n')
            for src, name in RUNTIME_MODULES.items():
                z.write(src, f"assets/cloudkd_rt/{name}")

    out = atomic_write(out, write)
    return PackResult(out, out.stat().st_size, params, config)
