"""Student speed on CPU in NCHW vs channels-last (NHWC) memory layout: one training step and inference.

    python benchmarks/student_layout.py [--presets unet-xs unet-s unet-m] [--batch 8] [--crop 256] [--repeats 3]

Prints seconds per training step (AdamW, batch of crops) and ms per 512x512 chip of inference (batches of 4) for
each preset in both layouts, and the largest logit difference between the two layouts on the same weights.
``CompactUNet.nhwc_on_cpu`` switches the layout; the library uses NHWC on CPU.
"""

import argparse
import time

import torch

from cloudkd.student.unet import CompactUNet, from_preset


def step_seconds(model, x, repeats):
    opt = torch.optim.AdamW(model.parameters())
    for i in range(repeats + 1):
        if i == 1:
            t0 = time.perf_counter()
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - t0) / repeats


def infer_ms_per_chip(model, x, repeats):
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = model(x)
    model.train()
    return (time.perf_counter() - t0) / repeats / len(x) * 1000, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["unet-xs", "unet-s", "unet-m"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; training: batch {a.batch} x "
          f"{a.crop}x{a.crop}; inference: 4 x 512x512")
    print("| preset | layout | s / training step | ms / chip inference | max abs logit diff vs NCHW |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(a.batch, 4, a.crop, a.crop, generator=g)
    xi = torch.randn(4, 4, 512, 512, generator=g)
    for name in a.presets:
        torch.manual_seed(0)
        state = from_preset(name).state_dict()
        ref = None
        for nhwc in (False, True):
            CompactUNet.nhwc_on_cpu = nhwc
            model = from_preset(name)
            model.load_state_dict(state)
            ms, out = infer_ms_per_chip(model, xi, a.repeats)
            if ref is None:  # NCHW comes first: the reference
                ref = out
            diff = "-" if out is ref else f"{(out - ref).abs().max().item():.1e}"
            model.load_state_dict(state)
            s = step_seconds(model, xt, a.repeats)
            print(f"| {name} | {'NHWC' if nhwc else 'NCHW'} | {s:.3f} | {ms:.0f} | {diff} |")
    CompactUNet.nhwc_on_cpu = True


if __name__ == "__main__":
    main()
