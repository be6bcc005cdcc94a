"""Generator speed: time `cloudkd synth` for N chips of SIZE pixels with W worker processes.

    python benchmarks/synth_speed.py --n 100 --size 512 --workers 2
"""

import argparse
import os
import shutil
import tempfile

from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="cloudkd-synth-")
    try:
        res = synthesize(f"{root}/d", SynthConfig(n_train=a.n, n_test=0, size=a.size), workers=a.workers,
                         progress=False)
        print(f"{a.n} chips of {a.size}x{a.size} with {a.workers} worker(s): {res.seconds:.1f} s "
              f"= {1000 * res.seconds / a.n:.0f} ms/chip wall, {60 * a.n / res.seconds:.0f} chips/min")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
