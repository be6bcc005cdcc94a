"""Candidate on-board students against today's unet-s, side by side in one run (issue 18).

For each candidate: parameters, MACs per 512x512 chip, int8 ONNX bytes, and fp32 / int8 ONNX Runtime throughput
(2 threads, batches of 8 chips of random normalised input; speed does not depend on the weights), each as a
ratio to the reference unet-s measured in the same run, plus achieved G MAC/s against the machine's measured
peak. Writes ``benchmarks/results/student_candidates.csv`` / ``.md``.

The trained candidates' Jaccard comes from the seed study of ``benchmarks/distill_compare.py`` (each candidate
trained with the reference's recipe and budget, KD included; see its docstring): with ``--seeds-csv`` (default
``benchmarks/results/student_candidates_seeds.csv`` when present) this script joins the two and writes the
Pareto table ``student_candidates_pareto.md`` (mean +- sd over seeds of the generated-test and real-chip
Jaccard against int8 chips/s) and the figure ``docs/student_candidates_pareto.png``. ``--reuse-speed`` skips
the timing and reads the speed CSV written before.

    python benchmarks/student_candidates.py [--reuse-speed] [--candidates s2d2 ...] [--out PREFIX]
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
    "s2d2r": dict(widths=(16, 24, 32, 72), stem=2, refine=8),
}
#: run of the distill_compare seed study -> candidate (the presets unet-s, unet-s2d2, unet-s2d4)
SEED_RUNS = {"online_cwd": "unet-s (reference)", "online_cwd_s2d2": "s2d2", "online_cwd_s2d4": "s2d4",
             "online_cwd_s2d2r": "s2d2r"}


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
    ap.add_argument("--seeds-csv", default=str(REPO / "benchmarks" / "results" / "student_candidates_seeds.csv"))
    ap.add_argument("--png", default=str(REPO / "docs" / "student_candidates_pareto.png"))
    ap.add_argument("--reuse-speed", action="store_true", help="read the speed CSV instead of timing again")
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                    help="time only these (the reference is always timed)")
    a = ap.parse_args()
    out = Path(a.out)
    df = pd.read_csv(out.with_suffix(".csv")) if a.reuse_speed else measure(a, out)
    if Path(a.seeds_csv).is_file():
        pareto(df, Path(a.seeds_csv), out.with_name(out.name + "_pareto.md"), Path(a.png))


def measure(a, out: Path) -> pd.DataFrame:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 512, 512)).astype(np.float32)
    calib = [x[i] for i in range(4)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, kw in CANDIDATES.items():
            if name not in a.candidates and name != "unet-s (reference)":
                continue
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
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    cols = ["model", "params", "gmacs", "int8_bytes", "fp32_chips_s", "int8_chips_s", "int8_x_ref", "int8_gmac_s",
            "int8_of_peak"]
    md = format_table(df.to_dict("records"), cols)
    note = (f"\n\n{a.threads} threads; machine peak measured in the same run: int8 {peak['int8']:.0f} G MAC/s, "
            f"fp32 {peak['fp32']:.0f} G MAC/s. Speed only (random weights); the trained candidates' Jaccard: student_candidates_pareto.md.\n")
    out.with_suffix(".md").write_text(md + note)
    print(md + note)
    return df


def on_front(points):
    """Indices of the Pareto-optimal (speed, jaccard) points: no other point is at least as fast and as good and
    better in one of the two."""
    return [i for i, (s, j) in enumerate(points)
            if not any((s2 >= s and j2 >= j) and (s2 > s or j2 > j) for k, (s2, j2) in enumerate(points) if k != i)]


def pareto(speed: pd.DataFrame, seeds_csv: Path, md_path: Path, png: Path):
    seeds = pd.read_csv(seeds_csv)
    real_csv = seeds_csv.with_name(seeds_csv.stem + "_real.csv")
    real = pd.read_csv(real_csv) if real_csv.is_file() else None
    rows = []
    for run, name in SEED_RUNS.items():
        s = seeds[seeds["run"] == run]
        if s.empty:
            continue
        sp = speed[speed["model"] == name].iloc[0]
        row = {"model": name, "params": int(sp["params"]), "gmacs": round(float(sp["gmacs"]), 3),
               "int8_chips_s": round(float(sp["int8_chips_s"]), 1), "int8_x_ref": round(float(sp["int8_x_ref"]), 2),
               "seeds": len(s), "test_jaccard_mean": round(s["test_jaccard"].mean(), 4),
               "test_jaccard_sd": round(s["test_jaccard"].std(ddof=1), 4) if len(s) > 1 else None}
        if real is not None and (real["run"] == run).any():
            r = real[real["run"] == run]
            row.update({"real_jaccard_mean": round(r["real_jaccard"].mean(), 4),
                        "real_jaccard_sd": round(r["real_jaccard"].std(ddof=1), 4) if len(r) > 1 else None,
                        "real_precision": round(r["precision"].mean(), 3), "real_recall": round(r["recall"].mean(), 3)})
        rows.append(row)
    ref = next((r for r in rows if r["model"] == "unet-s (reference)"), None)
    for key in ("test", "real"):
        col = f"{key}_jaccard_mean"
        pts = [(r["int8_chips_s"], r.get(col, float("nan"))) for r in rows]
        front = set(on_front(pts))
        for i, r in enumerate(rows):
            r[f"{key}_front"] = "yes" if i in front else "no"
            if ref is not None and col in r and col in ref:
                # difference of the means over the same seeds (the same data order for every model)
                r[f"{key}_minus_ref"] = round(r[col] - ref[col], 4)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    md = format_table([{k: r.get(k) for k in cols} for r in rows], cols)
    md_path.write_text(md + f"\n\nJaccard: mean and sd over seeds, from {seeds_csv.name}; chips/s: "
                            f"{md_path.name.replace('_pareto', '')} (int8 ONNX, one run).\n")
    print(md)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloudkd.common.viz import save_figure

    keys = [k for k in ("test", "real") if all(f"{k}_jaccard_mean" in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r["int8_chips_s"] for r in rows]
        ys = [r[f"{key}_jaccard_mean"] for r in rows]
        es = [r.get(f"{key}_jaccard_sd") or 0.0 for r in rows]
        ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=4)
        front = sorted((x, y) for r, x, y in zip(rows, xs, ys) if r[f"{key}_front"] == "yes")
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:green", label="Pareto front")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['model']}\n{r['params']:,} p, {r['int8_x_ref']:.1f}x, n={r['seeds']}", (x, y),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.margins(x=0.15, y=0.15)
        ax.axvline(75, color="tab:red", ls=":", label="75 chips/s (Sentinel-2 real time)")
        ax.set_xlabel("int8 ONNX chips/s, 2 threads (one run, side by side)")
        ax.set_ylabel("global Jaccard (mean +- sd over seeds)")
        ax.set_title("generated test split" if key == "test" else "labelled real chips (4, one scene)")
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    print(save_figure(fig, png))


if __name__ == "__main__":
    main()
