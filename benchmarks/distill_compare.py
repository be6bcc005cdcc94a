"""Does distillation help? The same student at the same budget: labels only, offline KD, online KD, and the
smp U-Net/ResNet-34 benchmark model, scored on held-out generated chips with the leaderboard metric.

    python benchmarks/distill_compare.py --demo runs/demo --data data/generated/demo --epochs 15
        [--runs labels offline online resnet34] [--kd pixel] [--temperature 2] [--kd-weight 1]

Needs a trained teacher in DEMO/nnunet and the training chips' soft labels in DEMO/soft/train (``make demo``
writes both). Every run trains on the same fold-0 training chips with the same seed, epochs and steps, selects
its best epoch on the fold-0 validation locations, and is scored on the test split (other locations). Writes
DEMO/distill/results.{json,md} and results.png.
"""

import argparse
import json
import time
from pathlib import Path

from cloudkd.data import resolve_split
from cloudkd.demo import format_table
from cloudkd.export import export_onnx
from cloudkd.predict import predict_folder
from cloudkd.scoring import score_folder
from cloudkd.student.train import TrainConfig, fit, load_student
from cloudkd.viz import save_figure

RUNS = {
    "labels": dict(model="unet-s", label_weight=1.0, kd_weight=0.0),
    "offline": dict(model="unet-s", label_weight=1.0, soft=True),
    "online": dict(model="unet-s", label_weight=1.0, online=True),
    "resnet34": dict(model="smp:Unet:resnet34", label_weight=1.0, kd_weight=0.0),
    # a stronger teacher: the ResNet-34 U-Net trained above (run "resnet34" first), exported to ONNX and
    # distilled online, the path for any pretrained ONNX cloud model
    "kd_resnet34": dict(model="unet-s", label_weight=1.0, onnx_from="resnet34"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--runs", nargs="+", default=list(RUNS))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (default: one pass)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kd", default="pixel")
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0, help="training seed (data order, augmentation, init)")
    ap.add_argument("--tag", default="", help="suffix of the run folders and the results file")
    a = ap.parse_args()
    demo = Path(a.demo)
    out_root = demo / "distill"
    test = resolve_split(a.data, "test")
    rows = []
    for name in a.runs:
        spec = dict(RUNS[name])
        run_dir = out_root / (name + a.tag)
        onnx = None
        if spec.get("onnx_from"):  # the teacher run's best model as ONNX (dynamic batch and size), beside it
            teacher_run = out_root / spec["onnx_from"]
            onnx = export_onnx(load_student(teacher_run), teacher_run / "model.onnx", size=256)
        cfg = TrainConfig(data=a.data, out=str(run_dir), model=spec["model"], folds=str(demo / "folds.csv"),
                          epochs=a.epochs, batch_size=a.batch, lr=a.lr, label_weight=spec["label_weight"],
                          kd_weight=a.kd_weight if (spec.get("soft") or spec.get("online") or onnx) else 0.0,
                          kd=a.kd, temperature=a.temperature,
                          soft_dir=str(demo / "soft" / "train") if spec.get("soft") else None,
                          teacher_nnunet=str(demo / "nnunet") if spec.get("online") else None,
                          teacher_onnx=str(onnx) if onnx else None,
                          limit_train_batches=a.steps, seed=a.seed, progress=False)
        t0 = time.perf_counter()
        r = fit(cfg)
        train_s = time.perf_counter() - t0
        model = load_student(run_dir)
        p = predict_folder(model, test.features_dir, run_dir / "test_pred", progress=False)
        rep = score_folder(run_dir / "test_pred", test.labels_dir)
        rows.append({"run": name + a.tag, "model": spec["model"], "params": r.params,
                     "kd": f"{a.kd} T={a.temperature} w={a.kd_weight}" if cfg.kd_weight else "-",
                     "val_jaccard": r.val_jaccard, "test_jaccard": rep.jaccard, "train_s": round(train_s),
                     "ms_per_chip": round(p["ms_per_chip"], 1)})
        print(format_table(rows[-1:], list(rows[-1])), flush=True)
    out_root.mkdir(parents=True, exist_ok=True)
    demo_results = demo / "results.json"
    if demo_results.is_file():  # the teacher (and thresholding) on the same test split, for reference
        for r in json.loads(demo_results.read_text())["rows"]:
            if r["method"] in ("nnU-Net teacher", "thresholding"):
                rows.append({"run": r["method"] + " (reference)", "model": r["method"], "params": r["params"],
                             "kd": "-", "val_jaccard": None, "test_jaccard": r["jaccard"], "train_s": None,
                             "ms_per_chip": r["ms_per_chip"]})
    cols = ["run", "model", "params", "kd", "val_jaccard", "test_jaccard", "train_s", "ms_per_chip"]
    md = format_table(rows, cols)
    print(md)
    tag = a.tag or "results"
    (out_root / f"{tag}.md").write_text(md + "\n")
    (out_root / f"{tag}.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    ax.barh([r["run"] for r in rows], [r["test_jaccard"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        size = f"{r['params'] / 1e6:.1f} M" if r["params"] >= 1e6 else f"{r['params'] / 1e3:.0f} k" \
            if r["params"] >= 1e3 else str(r["params"])
        ax.text(r["test_jaccard"], i, f" {r['test_jaccard']:.3f} ({size} params)", va="center")
    ax.set_xlabel("global Jaccard, held-out test split")
    ax.set_xlim(0, 1.25)
    fig.tight_layout()
    print(save_figure(fig, out_root / f"{tag}.png"))


if __name__ == "__main__":
    main()
