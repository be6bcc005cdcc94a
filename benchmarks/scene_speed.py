"""Whole-product speed of `cloudkd onboard predict-scene`: km² per second on this CPU, extrapolated to a full
10,980 x 10,980 Sentinel-2 tile and set beside the rate at which the satellite acquires ground.

    python benchmarks/scene_speed.py [--size 3000] [--threads 2] [--models runs/demo/export/model_int8.onnx ...]

Builds once (under ``--work``, default runs/scene_speed) a Sentinel-2 L2A product cut to ``--size`` pixels square:
a mosaic of the generated benchmark's 512x512 test chips (data/generated/demo, or the ``--data`` given) written as
a real product is laid out (``.SAFE`` folder, lossless JPEG 2000 bands, ``MTD_MSIL2A.xml`` of processing baseline
04.00 with ``BOA_ADD_OFFSET`` -1000, ``manifest.safe``; :func:`tests/data/synthproduct.write_safe`). Then for
each model it runs the same :func:`cloudkd.onboard.scene.predict_scene` as the command (tile 512, overlap 64,
batch 4: the mask COG and the chip report), ``--repeats`` times, and keeps the fastest run, split into
reading (JPEG 2000 decoding), the model (normalisation included) and writing (COG with overviews).

Extrapolation to a full tile: the model's time scales with the number of tiles (25 x 25 = 625 tiles of 512 with
overlap 64 for 10,980 pixels, against the measured product's), reading, writing and the rest with the pixels.
The speed does not depend on the weights, so a trained student stands in for the on-board one.

``full_tile_without_decoding_s`` leaves out the JPEG 2000 decoding (the measured reading time, scaled): what a
flight computer pays, where the bands arrive raw.

The reference rate: Sentinel-2's MSI images a 290 km swath while the ground track moves at about 6.8 km/s, so
one satellite acquires about 1,970 km² per second.

Results: ``benchmarks/results/scene_speed.md`` and ``.csv`` (one row per model).
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_rows
from cloudkd.onboard.scene import _positions, load_predictor, predict_scene
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))  # the tests' miniature .SAFE products
from synthproduct import write_safe  # noqa: E402

FULL_TILE = 10980  # pixels of a Sentinel-2 tile at 10 m
PIXEL_KM2 = 1e-4  # a 10 m pixel
ACQUISITION_KM2_S = 290 * 6.8  # swath x ground-track speed: ~1,970 km²/s
TILE, OVERLAP, BATCH = 512, 64, 4


def mosaic(data: Path, size: int) -> np.ndarray:
    """(4, size, size) uint16: the test chips of ``data`` side by side, row by row (repeated when too few)."""
    from cloudkd.data import resolve_split
    from cloudkd.data.chips import read_chip_dn

    split = resolve_split(data, "test")
    ids = split.chip_ids()
    n = -(-size // 512)
    rows = []
    for r in range(n):
        rows.append(np.concatenate([read_chip_dn(split.chip_dir(ids[(r * n + c) % len(ids)]))
                                    for c in range(n)], axis=2))
    return np.concatenate(rows, axis=1)[:, :size, :size]


def product(work: Path, data: Path, size: int) -> Path:
    found = sorted(work.glob(f"product_{size}/*.SAFE"))
    if found:
        return found[0]
    t = time.perf_counter()
    folder = work / f"product_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    safe = write_safe(folder, mosaic(data, size))
    print(f"built {safe} in {time.perf_counter() - t:.1f} s")
    return safe


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=3000, help="Side of the product in pixels.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("data/generated/demo"))
    ap.add_argument("--work", type=Path, default=Path("runs/scene_speed"))
    ap.add_argument("--models", type=Path, nargs="+",
                    default=[Path("runs/demo/export/model_int8.onnx"), Path("runs/demo/student")])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/scene_speed"))
    args = ap.parse_args()

    safe = product(args.work, args.data, args.size)
    tiles_full = len(_positions(FULL_TILE, TILE, TILE - OVERLAP)) ** 2
    full_km2 = FULL_TILE ** 2 * PIXEL_KM2
    rows = []
    for model in args.models:
        if not model.exists():
            print(f"skipping {model}: not found (make demo trains and exports it)")
            continue
        fn = load_predictor(model, args.threads)
        best = None
        for i in range(args.repeats):
            out = args.work / f"mask_{model.stem}.tif"
            cpu = time.process_time()
            r = predict_scene(safe, out, fn, tile=TILE, overlap=OVERLAP, batch_size=BATCH, progress=False,
                              chip_report=out.with_suffix(".csv"))
            r["cpu_s"] = time.process_time() - cpu  # CPU seconds of all threads: what other jobs cannot inflate
            print(f"{model}: run {i + 1}: {r['seconds']:.2f} s (read {r['seconds_read']:.2f}, model "
                  f"{r['seconds_model']:.2f}, write {r['seconds_write']:.2f}; CPU {r['cpu_s']:.2f} s), load "
                  f"{os.getloadavg()[0]:.1f}")
            best = r if best is None or r["seconds"] < best["seconds"] else best
        r = best
        other = r["seconds"] - r["seconds_model"]  # reading, writing, blending: per pixel
        px_ratio = FULL_TILE ** 2 / (r["height"] * r["width"])
        full_s = r["seconds_model"] * tiles_full / r["tiles"] + other * px_ratio
        raw_s = full_s - r["seconds_read"] * px_ratio  # on board the bands come raw: no JPEG 2000 to decode
        rows.append({
            "model": str(model), "threads": args.threads, "product_px": f"{r['height']}x{r['width']}",
            "km2": round(r["km2"], 1), "tiles": r["tiles"], "seconds": round(r["seconds"], 2),
            "read_s": round(r["seconds_read"], 2), "model_s": round(r["seconds_model"], 2),
            "write_s": round(r["seconds_write"], 2), "cpu_s": round(r["cpu_s"], 2),
            "km2_per_s": round(r["km2"] / r["seconds"], 1),
            "full_tile_s": round(full_s, 1), "full_tile_km2_per_s": round(full_km2 / full_s, 1),
            "share_of_acquisition_rate": round(full_km2 / full_s / ACQUISITION_KM2_S, 3),
            "full_tile_without_decoding_s": round(raw_s, 1),
            "without_decoding_km2_per_s": round(full_km2 / raw_s, 1),
            "load_avg_1min": round(os.getloadavg()[0], 1)})
    if not rows:
        raise SystemExit("no model found: run make demo first, or give --models")
    write_rows(args.results.with_suffix(".csv"), rows)
    cols = list(rows[0])
    md = [f"# predict-scene speed ({platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d')})", "",
          f"Product: generated L2A .SAFE, lossless JPEG 2000, {args.size} x {args.size} px at 10 m; "
          f"`python benchmarks/scene_speed.py --size {args.size} --threads {args.threads}`. Full tile: "
          f"{FULL_TILE} x {FULL_TILE} px = {full_km2:,.0f} km², {tiles_full} tiles (model time scaled by tiles, the "
          f"rest by pixels). Acquisition rate of one satellite: about {ACQUISITION_KM2_S:,.0f} km²/s.", "",
          "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    args.results.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
