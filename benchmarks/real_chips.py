"""The real-chip benchmark on the demo's models: every method side by side on labelled real chips.

    python benchmarks/real_chips.py [--real ../shared/data/real_labelled] [--work runs/demo] [--out runs/real_chips]
                                    [--student RUN ...] [--onnx FILE ...] [--peer auto|yes|no] [--md FILE]

Scores, with the leaderboard metric, whatever of ``make demo``'s artefacts exist under ``--work`` (the fitted
thresholding, the nnU-Net teacher, the student, its int8 ONNX export), any extra ``--student`` runs and
``--onnx`` models, the bare ``mean(B02, B03, B04) > 0.25`` rule, and the ukis-csmask peer when installed. It is
``cloudkd real-bench`` with the demo's paths filled in; ``--md`` appends the Markdown table to a file (e.g.
``benchmarks/results/real_chips.md``). Four chips of one scene: a check, not a training set.
"""

import argparse
import tempfile
from pathlib import Path

from cloudkd.baselines.threshold import ThresholdModel
from cloudkd.common.cli import format_table
from cloudkd.teacher import peer
from cloudkd.evaluate.realchips import (nnunet_method, onnx_method, peer_method, run_real_bench, student_method,
                                        threshold_method)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default=str(SHARED / "real_labelled"))
    ap.add_argument("--work", default="runs/demo", help="a make-demo work folder whose models to score")
    ap.add_argument("--student", nargs="*", default=[], help="extra student runs")
    ap.add_argument("--onnx", nargs="*", default=[], help="extra ONNX models")
    ap.add_argument("--peer", default="auto", choices=["auto", "yes", "no"])
    ap.add_argument("--out", default="runs/real_chips")
    ap.add_argument("--md", default=None, help="append the Markdown table to this file")
    a = ap.parse_args()
    work = Path(a.work)

    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare.json"  # mean(B02, B03, B04) > 0.25 is the threshold model with no whiteness test
        ThresholdModel(0.25, float("inf"), fit_jaccard=None).save(bare)
        methods = [threshold_method(bare, "mean(B02,B03,B04) > 0.25")]
        if (work / "threshold.json").is_file():
            methods.append(threshold_method(work / "threshold.json", "thresholding (fitted)"))
        if (work / "nnunet" / "teacher.json").is_file():
            methods.append(nnunet_method(work / "nnunet"))
        if (work / "student" / "student.pt").is_file():
            methods.append(student_method(work / "student", "student"))
        if (work / "export" / "model_int8.onnx").is_file():
            methods.append(onnx_method(work / "export" / "model_int8.onnx", "student int8"))
        methods += [student_method(r) for r in a.student] + [onnx_method(f) for f in a.onnx]
        if a.peer == "yes" or (a.peer == "auto" and peer.available()):
            methods.append(peer_method())
        r = run_real_bench(a.real, methods, a.out)
    table = format_table(r.rows, list(r.summary.columns))
    print(table)
    print(f"-> {r.out / 'summary.csv'}, {r.out / 'per_chip.csv'}, {r.figure}")
    if a.md:
        with open(a.md, "a") as f:
            f.write(f"\n`python benchmarks/real_chips.py --work {a.work}` on {a.real}:\n\n{table}\n")


if __name__ == "__main__":
    main()
