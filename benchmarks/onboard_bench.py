"""The side-by-side on-board benchmark (same as ``cloudkd bench``): thresholding, the nnU-Net teacher, the smp
U-Net/ResNet-34, the student in PyTorch, ONNX fp32 and ONNX int8 on the demo's held-out chips, 2 threads.

    python benchmarks/onboard_bench.py [--threads 2] [--out runs/bench]

Needs ``make demo`` (teacher, student) and, for the ResNet-34 row, ``benchmarks/distill_compare.py --runs
resnet34``. Writes runs/bench/bench.{md,json,png}.
"""

import sys

from cloudkd.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", *sys.argv[1:]], standalone_mode=True))
