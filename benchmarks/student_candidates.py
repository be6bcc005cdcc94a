"""Candidate on-board students against today's unet-s, side by side in one run (issue 18).

For each candidate: parameters, MACs per 512x512 chip, int8 ONNX bytes, and fp32 / int8 ONNX Runtime throughput
(2 threads, batches of 8 chips of random normalised input; speed does not depend on the weights), each as a
ratio to the reference unet-s measured in the same run, plus achieved G MAC/s against the machine's measured
peak. Writes ``benchmarks/results/student_candidates.csv`` / ``.md``. Speed only: the candidates' Jaccard (each
trained with the reference's recipe and budget) is not measured by this script yet.

    python benchmarks/student_candidates.py
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cloudkd.common.cli import format_table
from cloudkd.common.onnx import ort_logits, ort_session
from cloudkd.common.sizes import count_params
from cloudkd.onboard.bench import machine_peak
from cloudkd.onboard.export import count_macs, export_onnx, quantize_int8
from cloudkd.student.unet import CompactUNet

REPO = Path(__file__).resolve().parents[1]
#: name -> CompactUNet keyword arguments
CANDIDATES = {
    "unet-s (reference)": dict(widths=(8, 16, 24, 32, 72)),
    "s2d2": dict(widths=(16, 24, 32, 72), stem=2),
    "s2d2-sep": dict(widths=(16, 24, 32, 72), stem=2, conv="separable"),
    "s2d2-narrow": dict(widths=(12, 16, 24, 48), stem=2),
    "s2d4": dict(widths=(24, 32, 72), stem=4),
    "s2d4-sep": dict(widths=(32, 48, 96), stem=4, conv="separable"),
}


def throughput(session, x, seconds):
    ort_logits(session, x[:1])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ort_logits(session, x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0, help="timing per model and precision")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (the best is kept)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "student_candidates"))
    a = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 512, 512)).astype(np.float32)
    calib = [x[i] for i in range(4)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, kw in CANDIDATES.items():
            m = CompactUNet(**kw).eval()
            fp32 = export_onnx(m, Path(tmp) / f"{name}.onnx")
            q = quantize_int8(fp32, Path(tmp) / f"{name}_int8.onnx", calib)
            sessions[name] = (ort_session(fp32, a.threads), ort_session(q, a.threads))
            rows.append({"model": name, "kwargs": json.dumps(kw), "params": count_params(m),
                         "gmacs": count_macs(m, 512) / 1e9, "int8_bytes": q.stat().st_size})
        speed = {r["model"]: [0.0, 0.0] for r in rows}
        for _ in range(a.rounds):  # interleaved, so drift hits every model alike
            for name, (s32, s8) in sessions.items():
                speed[name][0] = max(speed[name][0], throughput(s32, x, a.seconds))
                speed[name][1] = max(speed[name][1], throughput(s8, x, a.seconds))
    peak = machine_peak(a.threads)
    ref = speed["unet-s (reference)"]
    for r in rows:
        f, q = speed[r["model"]]
        r.update({"fp32_chips_s": f, "int8_chips_s": q, "int8_x_ref": q / ref[1], "fp32_x_ref": f / ref[0],
                  "int8_gmac_s": r["gmacs"] * q, "int8_of_peak": r["gmacs"] * q / peak["int8"]})
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    cols = ["model", "params", "gmacs", "int8_bytes", "fp32_chips_s", "int8_chips_s", "int8_x_ref", "int8_gmac_s",
            "int8_of_peak"]
    md = format_table(df.to_dict("records"), cols)
    note = (f"\n\n{a.threads} threads; machine peak measured in the same run: int8 {peak['int8']:.0f} G MAC/s, "
            f"fp32 {peak['fp32']:.0f} G MAC/s. Speed only (random weights): no Jaccard yet.\n")
    out.with_suffix(".md").write_text(md + note)
    print(md + note)


if __name__ == "__main__":
    main()
