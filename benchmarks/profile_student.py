"""Where the student's time goes: ONNX Runtime's per-operator profile of one 512x512 chip (2 threads), and the
multiply-accumulates per stage of the network.

    python benchmarks/profile_student.py --export runs/demo/export --run runs/demo/student
"""

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort
import torch

from cloudkd.student.runs import load_student


def ort_profile(path, threads, n=20):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "prof")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4, 512, 512)).astype(np.float32)
    for _ in range(n):
        sess.run(None, {sess.get_inputs()[0].name: x})
    events = json.load(open(sess.end_profiling()))
    by = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
    total = sum(by.values())
    return [(op, 100 * d / total, d / n / 1000) for op, d in by.most_common(8)]


def stage_macs(model):
    shares = collections.Counter()

    def hook(name):
        def h(mod, inp, out):
            shares[name] += out.numel() * mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        return h

    for n, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook(".".join(n.split(".")[:2])))
    with torch.no_grad():
        model(torch.zeros(1, 4, 512, 512))
    total = sum(shares.values())
    return [(k, v / 1e6, 100 * v / total) for k, v in shares.most_common()]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default="runs/demo/export")
    ap.add_argument("--run", default="runs/demo/student")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for name in ("model_fp32_b1.onnx", "model_int8.onnx"):
        print(f"{name}: share of kernel time by operator (ms per chip)")
        for op, pct, ms in ort_profile(os.path.join(a.export, name), a.threads):
            print(f"  {op:22s} {pct:5.1f}%  {ms:7.2f} ms")
    print("multiply-accumulates per stage (512x512 chip)")
    for k, m, pct in stage_macs(load_student(a.run)):
        print(f"  {k:12s} {m:7.0f} M  {pct:5.1f}%")
