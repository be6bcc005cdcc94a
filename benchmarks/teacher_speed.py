"""nnU-Net teacher cost on this machine: seconds per training iteration and ms per 512x512 chip at inference.

    python benchmarks/teacher_speed.py [--chips 12] [--iters 3] [--device cpu]

Generates a few 512x512 chips, prepares and plans them with nnU-Net (its own workspace under
runs/bench_teacher, so no demo model is touched), then for each configuration below trains one epoch of
``--iters`` iterations with nnU-Net's real trainer (data augmentation, deep supervision) and times one chip of
inference through nnU-Net's predictor (sliding window, no TTA):

* ``2d`` default network (46 M parameters) at patch 512 and batch 8, nnU-Net's plan for the demo's 160 chips:
  what nnU-Net would run on a GPU;
* full width at patch 256 / batch 2;
* the demo's narrow CPU budget (8..128 features, patch 256, batch 4).

Seconds per iteration come from nnU-Net's epoch timestamps, divided by the iterations of the epoch
(training + validation iterations).
"""

import argparse
import json
import time
from pathlib import Path


from cloudkd.data import read_chip, resolve_split
from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize
from cloudkd.teacher.model import NnUNetTeacher
from cloudkd.teacher.plans import Budget, describe_plan, plan_and_preprocess
from cloudkd.teacher.workspace import Workspace, plans_file
from cloudkd.teacher.convert import prepare
from cloudkd.teacher.train import train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=12)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default="runs/bench_teacher")
    a = ap.parse_args()
    root = Path(a.dir)
    synthesize(root / "data", SynthConfig(n_train=a.chips, n_test=0, size=512, seed=11), progress=False)
    ws = Workspace(root / "ws")
    prepare(root / "data", ws, k=2, progress=False)
    plan_and_preprocess(ws, 501)
    plans = json.loads(plans_file(ws, 501).read_text())
    default = describe_plan(plans, "2d")
    budgets = {
        # nnU-Net plans batch 8 for the demo's 160 chips (and the real dataset); a 12-chip set would get less
        "2d default network, patch 512, batch 8": Budget(epochs=1, iters_per_epoch=a.iters, val_iters=1,
                                                        patch=512, batch=8),
        "full width, patch 256, batch 2": Budget(epochs=1, iters_per_epoch=a.iters, val_iters=1, patch=256,
                                                 batch=2),
        "demo budget (8..128 features, patch 256, batch 4)": Budget(epochs=1, iters_per_epoch=a.iters, val_iters=1,
                                                                    patch=256, batch=4, base_features=8,
                                                                    max_features=128),
    }
    chip = read_chip(resolve_split(root / "data").chip_dir(resolve_split(root / "data").chip_ids()[0]))
    rows = []
    for name, b in budgets.items():
        r = train(ws, 501, 0, b, device=a.device, force=True)
        teacher = NnUNetTeacher(r.model_folder, folds=[0], device=a.device, workspace=ws)
        teacher.predict_chip(chip)  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            teacher.predict_chip(chip)
        ms = 1000 * (time.perf_counter() - t) / 3
        rows.append({"configuration": name, "params": teacher.n_params, "patch": b.patch, "batch": b.batch,
                     "s_per_iteration": round(r.seconds_per_iteration, 2), "ms_per_chip_512": round(ms)})
    print(f"default 2d plan for 4x512x512: {default['params']:,} parameters, {default['n_stages']} stages, features "
          f"{default['features_per_stage']}, patch {default['patch_size']} (batch {default['batch_size']} for "
          f"{a.chips} chips)")
    print(f"{'configuration':50s} {'params':>11s} {'s/iter':>7s} {'ms/chip':>8s}")
    for r in rows:
        print(f"{r['configuration']:50s} {r['params']:11,d} {r['s_per_iteration']:7.2f} {r['ms_per_chip_512']:8d}")
    (root / "result.json").write_text(json.dumps({"default_plan": default, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
