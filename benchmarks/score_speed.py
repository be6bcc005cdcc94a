"""Scoring speed: time `score_folder` (the leaderboard metric over files) on N chip pairs of 512x512 masks.

    python benchmarks/score_speed.py --n 2000 [--workers 4] [--dir runs/bench_score]

Masks are written once (cloud-like blobs for labels, perturbed copies for predictions), then scored twice; the
second (warm page cache) run is the figure quoted in the README. Target: >= 200 chips/s on 2 cores.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from cloudkd.data.chips import write_mask
from cloudkd.data.chips import list_masks
from cloudkd.evaluate.scoring import score_folder


def make_masks(root: Path, n: int, size: int = 512, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        cid = f"{i:05d}"
        if (root / "pred" / f"{cid}.tif").is_file():
            continue
        cy, cx, r = rng.uniform(0, size, 3)
        label = ((yy - cy) ** 2 + (xx - cx) ** 2 < (r * 0.8) ** 2).astype(np.uint8)
        pred = np.roll(label, int(rng.integers(-20, 20)), axis=1)
        write_mask(root / "labels" / f"{cid}.tif", label)
        write_mask(root / "pred" / f"{cid}.tif", pred)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="runs/bench_score")
    a = ap.parse_args()
    root = Path(a.dir)
    t0 = time.perf_counter()
    make_masks(root, a.n)
    print(f"masks ready in {time.perf_counter() - t0:.1f} s ({a.n} pairs, {root})")
    extra = sorted(set(list_masks(root / "pred")) - {f"{i:05d}" for i in range(a.n)})
    for f in extra:
        os.unlink(root / "pred" / f"{f}.tif")
    runs = []
    for attempt in ("first", "warm"):
        rep = score_folder(root / "pred", root / "labels", workers=a.workers)
        cps = rep.n_chips / rep.seconds
        runs.append({"run": attempt, "n_chips": rep.n_chips, "seconds": round(rep.seconds, 3),
                     "chips_per_s": round(cps, 1), "jaccard": round(rep.jaccard, 6)})
        print(f"{attempt:>5}: {rep.n_chips} chips in {rep.seconds:.2f} s = {cps:.0f} chips/s "
              f"(global Jaccard {rep.jaccard:.4f}, {a.workers} reader threads, {os.cpu_count()} cores)")
    (root / "result.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
