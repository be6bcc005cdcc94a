"""Landsat-8 end to end: generated 38-Cloud scenes -> thresholding, nnU-Net teacher, distilled student -> the
38-Cloud scene-level evaluation.

    python benchmarks/landsat_e2e.py --out runs/landsat

Generates ``data/generated/landsat`` (38-Cloud layout; 384x384 patches of Landsat-like scenes at 30 m), imports
it into the On Cloud N layout (scene = location, so folds never split a scene), then per method: fit/train on the
training scenes, predict every non-empty test patch, stitch the patches back into whole scenes and score each
scene (precision, recall, specificity, Jaccard, overall accuracy; mean over scenes, as Cloud-Net reports on
38-Cloud), beside the patch-level global Jaccard. Prints one table, writes ``results.csv`` and ``scenes.png``.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cloudkd.baselines.threshold import fit_threshold
from cloudkd.baselines.threshold import predict_folder as threshold_predict
from cloudkd.data import load_index, read_chip, read_label, resolve_split
from cloudkd.data.folds import make_folds, write_folds
from cloudkd.data.landsat.reader import PatchName, read_patch_table, stitch
from cloudkd.data.landsat.synth import Landsat38Config, synthesize_38cloud
from cloudkd.common.cli import format_table
from cloudkd.evaluate.scoring import score_folder
from cloudkd.data.landsat.scenes import score_scenes


def scene_rgb(split, g, shape):
    """The true-colour picture of one test scene, stitched from its imported patches."""
    from cloudkd.common.viz import true_colour

    grid = (int(g.rows.iloc[0]), int(g.cols.iloc[0]))
    bands = []
    for b in range(3):
        parts = {PatchName(r.scene, int(r.row), int(r.col), int(r.n)): read_chip(split.chip_dir(r.chip_id))[b]
                 for r in g.itertuples() if not r.empty}
        bands.append(stitch(parts, shape, grid))
    return true_colour(np.stack(bands))  # B02, B03, B04: all true_colour reads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/generated/landsat")
    ap.add_argument("--out", default="runs/landsat")
    ap.add_argument("--train-scenes", type=int, default=10)
    ap.add_argument("--test-scenes", type=int, default=4)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cfg = Landsat38Config(n_train_scenes=a.train_scenes, n_test_scenes=a.test_scenes, seed=a.seed)
    r = synthesize_38cloud(a.data, cfg)
    print(f"data: {a.data} ({'reused' if r.reused else f'generated in {r.seconds:.0f} s'})")
    train_split, test_split = resolve_split(a.data, "train"), resolve_split(a.data, "test")
    train = load_index(train_split)
    table = read_patch_table(test_split.root)
    print(f"import: {train_split.root}: {len(train)} training patches of {train.location.nunique()} scenes; "
          f"{(~table['empty']).sum()} non-empty of {len(table)} test patches, {table.scene.nunique()} scenes "
          f"({time.perf_counter() - t:.0f} s)")
    folds = write_folds(make_folds(train, k=min(5, train.location.nunique()), seed=a.seed), out / "folds.csv")
    rows, preds = [], {}

    def add(method, params, pred, seconds):
        scenes = score_scenes(pred, a.data)
        scenes.write(pred.parent / f"{pred.name}_scenes")  # per_scene.csv beside the predictions
        patches = score_folder(pred, test_split.labels_dir)
        m = scenes.means
        rows.append({"method": method, "params": params, "train_s": round(seconds),
                     **{f"scene_{k}": round(100 * v, 2) for k, v in m.items()},
                     "patch_global_jaccard": round(patches.jaccard, 4)})
        preds[method] = pred
        print(f"{method}: mean scene Jaccard {100 * m['jaccard']:.2f}, accuracy {100 * m['accuracy']:.2f}", flush=True)

    # thresholding
    t0 = time.perf_counter()
    tm = fit_threshold(train.features, train.label)
    threshold_predict(tm, test_split.features_dir, out / "pred" / "threshold", progress=False)
    add("thresholding", 2, out / "pred" / "threshold", time.perf_counter() - t0)

    # nnU-Net teacher within a CPU budget
    from cloudkd.data.folds import read_folds
    from cloudkd.teacher.model import NnUNetTeacher
    from cloudkd.teacher.model import predict_folder as teacher_predict
    from cloudkd.teacher.plans import Budget, plan_and_preprocess
    from cloudkd.teacher.workspace import Workspace
    from cloudkd.teacher.convert import prepare
    from cloudkd.teacher.train import train as teacher_train

    t0 = time.perf_counter()
    ws = Workspace(out / "nnunet")
    prepare(a.data, ws, folds=read_folds(folds))
    plan_and_preprocess(ws, processes=2)
    teacher_train(ws, fold=0, budget=Budget(epochs=a.teacher_epochs, iters_per_epoch=50, val_iters=2, patch=256,
                                            batch=4, base_features=8, max_features=128), device="cpu")
    teacher = NnUNetTeacher.from_workspace(ws, folds=[0], device="cpu")
    secs = time.perf_counter() - t0
    teacher_predict(teacher, test_split.features_dir, out / "pred" / "teacher", None, progress=False)
    add("nnU-Net teacher (CPU budget)", teacher.n_params, out / "pred" / "teacher", secs)

    # the student, distilled online from the teacher
    from cloudkd.student.predict import predict_folder
    from cloudkd.student.train import TrainConfig, fit
    from cloudkd.student.runs import load_student

    res = fit(TrainConfig(data=a.data, out=str(out / "student"), model="unet-s", folds=str(folds),
                          epochs=a.student_epochs, batch_size=8, crop=256, kd_weight=1.0,
                          teacher_nnunet=str(out / "nnunet"), seed=a.seed, accelerator="cpu"))
    student = load_student(out / "student")
    predict_folder(student, test_split.features_dir, out / "pred" / "student", progress=False)
    add("student unet-s (online KD)", res.params, out / "pred" / "student", res.seconds)

    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    print()
    print(format_table(rows, list(df.columns)))
    print(f"\nresults: {out / 'results.csv'}; total {time.perf_counter() - t:.0f} s")

    # one figure: each test scene, its truth and each method's stitched mask
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloudkd.common.viz import save_figure

    groups = list(table.groupby("scene"))
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(groups), cols, figsize=(2.6 * cols, 2.6 * len(groups)), squeeze=False)
    for i, (scene, g) in enumerate(groups):
        truth = read_label(test_split.root / "test_scene_gts" / f"{scene}.tif")
        grid = (int(g.rows.iloc[0]), int(g.cols.iloc[0]))
        panels = [("RGB", scene_rgb(test_split, g, truth.shape)), ("truth", truth)]
        for name, pred in preds.items():
            parts = {PatchName(r.scene, int(r.row), int(r.col), int(r.n)): read_label(pred / f"{r.chip_id}.tif")
                     for r in g.itertuples() if not r.empty}
            panels.append((name.split(" (")[0], stitch(parts, truth.shape, grid)))
        for j, (title, img) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(scene[10:25], fontsize=7)
    print(f"figure: {save_figure(fig, out / 'scenes.png')}")


if __name__ == "__main__":
    main()
