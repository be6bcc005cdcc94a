"""``make demo``: the whole story on generated data, one step after the other, reusing what is already built.

Steps so far: generate the benchmark -> location-grouped folds -> fit the thresholding baseline on the train split
-> predict the held-out test split (locations never seen in training) -> score with the leaderboard metric ->
print one results table and write it (CSV + JSON) with a PNG of sample chips and masks.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import pandas as pd

from .baselines.threshold import ThresholdModel, fit_threshold, predict_folder
from .data.chips import atomic_write, load_index, resolve_split
from .data.folds import make_folds, write_folds
from .data.synthetic import SynthConfig, synthesize
from .scoring import score_folder
from .viz import plot_chips


@dataclass
class DemoConfig:
    workdir: str = "runs/demo"
    data: str = "data/generated/demo"
    n_train: int = 160
    n_test: int = 80
    size: int = 512
    seed: int = 0
    difficulty: float = SynthConfig.difficulty
    folds: int = 5
    force: bool = False

    @classmethod
    def quick(cls, workdir: str = "runs/demo-quick", data: str = "data/generated/demo-quick") -> "DemoConfig":
        """A seconds-long variant for tests: few small chips."""
        return cls(workdir=workdir, data=data, n_train=24, n_test=12, size=128, folds=3)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def format_table(rows: List[dict], columns: List[str]) -> str:
    """A plain-text table (markdown pipes) of ``rows`` restricted to ``columns``."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}"
        return "-" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep] + [line(b) for b in body])


def run_demo(cfg: DemoConfig, progress: bool = True) -> List[dict]:
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    # 1. data
    scfg = SynthConfig(n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size, seed=cfg.seed,
                       difficulty=cfg.difficulty)
    _log(f"1/5 generate {cfg.n_train} train + {cfg.n_test} test chips ({cfg.size} px) in {cfg.data}")
    res = synthesize(cfg.data, scfg, overwrite=cfg.force, progress=progress)
    _log("    reused the existing dataset" if res.reused else f"    generated in {res.seconds:.1f} s")
    train = load_index(resolve_split(cfg.data, "train"))
    test_split = resolve_split(cfg.data, "test")

    # 2. folds (used by the teacher and student stages; written now so every stage shares them)
    folds_csv = work / "folds.csv"
    write_folds(make_folds(train, k=cfg.folds, seed=cfg.seed), folds_csv)
    _log(f"2/5 {cfg.folds} location-grouped folds -> {folds_csv}")

    # 3. thresholding baseline, fitted on the whole train split
    model_path = work / "threshold.json"
    if res.reused and model_path.is_file() and not cfg.force:
        model = ThresholdModel.load(model_path)
        _log(f"3/5 threshold: reused {model_path}")
    else:
        t0 = time.perf_counter()
        model = fit_threshold(train["features"], train["label"], progress=progress)
        model.save(model_path)
        _log(f"3/5 threshold fitted in {time.perf_counter() - t0:.1f} s: brightness > {model.brightness_min:.3f}, "
             f"whiteness < {model.whiteness_max:.3f} (train Jaccard {model.fit_jaccard:.4f}) -> {model_path}")

    # 4. predict the held-out test split
    pred_dir = work / "predictions" / "threshold"
    t0 = time.perf_counter()
    n = predict_folder(model, test_split.features_dir, pred_dir, progress=progress)
    ms_chip = 1000 * (time.perf_counter() - t0) / max(n, 1)
    _log(f"4/5 predicted {n} test chips -> {pred_dir} ({ms_chip:.1f} ms/chip incl. I/O)")

    # 5. score
    report = score_folder(pred_dir, test_split.labels_dir)
    report.write(work / "scores" / "threshold", work / "scores" / "threshold.json")
    rows = [{"method": "thresholding", "params": 2, "ms_per_chip": round(ms_chip, 2),
             "jaccard": report.jaccard, "precision": report.total.precision, "recall": report.total.recall}]
    _log(f"5/5 scored {report.n_chips} chips in {report.seconds:.2f} s")

    sample = list(report.per_chip.sort_values("chip_id")["chip_id"][:: max(1, len(report.per_chip) // 6)][:6])
    fig = plot_chips(test_split, sample, work / "summary.png", {"threshold": pred_dir},
                     title="held-out test chips (unseen locations)")
    table = pd.DataFrame(rows)
    atomic_write(work / "results.csv", lambda t: table.to_csv(t, index=False))
    atomic_write(work / "results.json", lambda t: Path(t).write_text(json.dumps(
        {"config": asdict(cfg), "rows": rows, "seconds": round(time.perf_counter() - t_all, 1)}, indent=2)))
    print()
    print(f"Global Jaccard on the generated held-out test split ({report.n_chips} chips, "
          f"{test_split.root}, locations unseen in training):")
    print(format_table(rows, ["method", "params", "ms_per_chip", "jaccard", "precision", "recall"]))
    print(f"\nresults: {work / 'results.csv'}   figure: {fig}   total {time.perf_counter() - t_all:.0f} s")
    return rows

