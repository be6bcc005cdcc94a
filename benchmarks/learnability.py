"""Calibration check of the generated benchmark: does a small learned model clearly beat thresholding?

    python benchmarks/learnability.py --data data/generated/demo --minutes 10

Trains an smp U-Net (ResNet-18 encoder, random init) on random 256x256 crops of the train split for a fixed
CPU time budget (BCE + Dice, AdamW), then scores the whole 512x512 test split with the leaderboard metric next
to the fitted thresholding baseline. This is a sanity check of the data, not the project's teacher or student.
"""

import argparse
import time

import numpy as np
import torch

from cloudkd.baselines.threshold import fit_threshold
from cloudkd.data import load_index, normalise, read_chip, read_label, resolve_split
from cloudkd.common.metrics import Confusion, confusion


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import segmentation_models_pytorch as smp

    torch.manual_seed(a.seed)
    train = load_index(resolve_split(a.data, "train"))
    test = load_index(resolve_split(a.data, "test"))
    x = np.stack([normalise(read_chip(f)) for f in train.features])
    y = np.stack([read_label(p) for p in train.label]).astype(np.float32)[:, None]
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=1)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    rng = np.random.default_rng(a.seed)
    size, c = x.shape[-1], a.crop
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < 60 * a.minutes:
        idx = rng.integers(len(x), size=a.batch)
        oy, ox = rng.integers(0, size - c + 1, (2, a.batch))
        xb = torch.from_numpy(np.stack([x[i, :, r:r + c, q:q + c] for i, r, q in zip(idx, oy, ox)]))
        yb = torch.from_numpy(np.stack([y[i, :, r:r + c, q:q + c] for i, r, q in zip(idx, oy, ox)]))
        logits = model(xb)
        p = torch.sigmoid(logits)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb) + \
            1 - (2 * (p * yb).sum() + 1) / (p.sum() + yb.sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
        if it % 25 == 0:
            print(f"iter {it}  loss {loss.item():.3f}  {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    cnn, thr = Confusion(), Confusion()
    tm = fit_threshold(train.features, train.label)
    with torch.no_grad():
        for f, lab in zip(test.features, test.label):
            refl = read_chip(f)
            target = read_label(lab)
            cnn += confusion(model(torch.from_numpy(normalise(refl)[None]))[0, 0].numpy() > 0, target)
            thr += confusion(tm.predict(refl), target)
    print(f"{len(train)} train chips, {it} iterations of {a.batch}x{c}x{c} in {a.minutes:g} min")
    print(f"test split ({len(test)} chips): thresholding {thr.jaccard():.4f}   smp U-Net/ResNet-18 {cnn.jaccard():.4f}")


if __name__ == "__main__":
    main()
