"""Is the teacher's outline tight too? The nnU-Net teacher's global Jaccard by dilation of its mask (the prediction
rule's dilation, ``cloudkd.common.infer.dilate_masks``) on the generated validation chips of its fold, the best
dilation chosen there (ties: the smaller) and applied to the test split; the student's counterpart is
``cloudkd student fit-rule``.

    python benchmarks/teacher_rule.py [--workdir runs/demo/nnunet] [--data data/generated/demo] \
        [--folds runs/demo/folds.csv] [--fold 0] [--max-dilate 12]
"""

import argparse

import numpy as np

from cloudkd.common.infer import dilate_masks, nodata_mask
from cloudkd.data import read_chip, read_label, resolve_split
from cloudkd.data.folds import read_folds
from cloudkd.teacher.model import NnUNetTeacher
from cloudkd.teacher.workspace import Workspace


def jaccard_by_dilation(teacher, chips, dilations, threshold=0.5):
    """Global Jaccard of the teacher's masks dilated by each of ``dilations`` over ``chips`` (dir, label path)."""
    tp, union = np.zeros(len(dilations)), np.zeros(len(dilations))
    for chip_dir, label_path in chips:
        refl = read_chip(chip_dir)
        label, clear = read_label(label_path) > 0, ~nodata_mask(refl)
        prob, _ = teacher.predict_chip(refl)
        above = (prob > threshold)[None].astype(np.uint8)
        for j, d in enumerate(dilations):
            mask = dilate_masks(above.copy(), d)[0].astype(bool) & clear
            tp[j] += np.count_nonzero(mask & label)
            union[j] += np.count_nonzero(mask | label)
    return tp / union


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/demo/nnunet")
    ap.add_argument("--data", default="data/generated/demo")
    ap.add_argument("--folds", default="runs/demo/folds.csv")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--max-dilate", type=int, default=12)
    a = ap.parse_args()
    teacher = NnUNetTeacher.from_workspace(Workspace(a.workdir), folds=[a.fold])
    dilations = list(range(a.max_dilate + 1))
    train, folds = resolve_split(a.data, "train"), read_folds(a.folds)
    val = jaccard_by_dilation(teacher, [(train.chip_dir(c), train.label_path(c))
                                        for c in folds.chip_id[folds.fold == a.fold]], dilations)
    best = dilations[int(np.flatnonzero(val == val.max())[0])]
    print("validation global Jaccard by dilation: " + ", ".join(f"{d} px {v:.4f}" for d, v in zip(dilations, val)))
    test = resolve_split(a.data, "test")
    t = jaccard_by_dilation(teacher, [(test.chip_dir(c), test.label_path(c)) for c in test.chip_ids()],
                            sorted({0, best}))
    print(f"chosen {best} px; test global Jaccard undilated {t[0]:.4f}, at {best} px {t[-1]:.4f}")


if __name__ == "__main__":
    main()
