"""Thresholding Jaccard on generated held-out locations, for several seeds (the calibration table of data/README.md).

    python benchmarks/threshold_calibration.py --seeds 0 1 2 --n-train 120 --n-test 100 [--difficulty 0.7]
"""

import argparse
import shutil
import tempfile

from cloudkd.baselines.threshold import fit_threshold, predict_folder
from cloudkd.data import load_index, resolve_split
from cloudkd.data.synth.sentinel2 import SynthConfig, synthesize
from cloudkd.evaluate.scoring import score_folder


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=120)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--difficulty", type=float, default=SynthConfig.difficulty)
    a = ap.parse_args()
    for seed in a.seeds:
        tmp = tempfile.mkdtemp(prefix="cloudkd-calib-")
        try:
            cfg = SynthConfig(n_train=a.n_train, n_test=a.n_test, size=a.size, seed=seed, difficulty=a.difficulty)
            synthesize(f"{tmp}/d", cfg, progress=False)
            train = load_index(resolve_split(f"{tmp}/d", "train"))
            model = fit_threshold(train.features, train.label)
            test = resolve_split(f"{tmp}/d", "test")
            predict_folder(model, test.features_dir, f"{tmp}/pred")
            rep = score_folder(f"{tmp}/pred", test.labels_dir)
            print(f"seed {seed} difficulty {a.difficulty}: train {a.n_train} / test {a.n_test} chips, thresholding "
                  f"global Jaccard {rep.jaccard:.4f} (precision {rep.total.precision:.3f}, recall "
                  f"{rep.total.recall:.3f}; train fit {model.fit_jaccard:.4f})", flush=True)
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
