"""Student training: validation by the one prediction rule, the online teacher's folds (no leak of validation
labels), the teacher built on each process's own device, and --resume refusing a changed run."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from conftest import invoke, make_dataset, snapshot


# ------------------------------------------------------------------------------------------- helpers
class Constant(torch.nn.Module):
    """A "network" giving the same cloud logit everywhere (a parameter so that Lightning has one to place)."""

    def __init__(self, logit: float):
        super().__init__()
        self.z = torch.nn.Parameter(torch.tensor(float(logit)))

    def forward(self, x):
        return self.z.expand(x.shape[0], 1, *x.shape[2:])


def _two_chip_dataset(root: Path, size: int = 32):
    """Chip 'val' (fold 0) with a nodata strip (DN 0 in all four bands, labelled clear as the data has it), a
    pixel at 0 in only two bands (data) and cloud labelled everywhere else; chip 'trn' (fold 1)."""
    rng = np.random.default_rng(0)
    val = rng.integers(500, 4000, (4, size, size)).astype(np.uint16)
    val[:, :8, :] = 0  # nodata: 8 rows
    val[:2, 20, 20] = 0  # two bands at 0: data, not nodata
    lab = np.ones((size, size), np.uint8)
    lab[:8, :] = 0
    trn = rng.integers(500, 4000, (4, size, size)).astype(np.uint16)
    make_dataset(root, {"val": val, "trn": trn}, labels={"val": lab, "trn": np.zeros((size, size), np.uint8)},
                 locations={"val": "a", "trn": "b"})
    folds = root.parent / f"{root.name}_folds.csv"
    pd.DataFrame({"chip_id": ["trn", "val"], "location": ["b", "a"], "fold": [1, 0]}).to_csv(folds, index=False)
    return folds


# ------------------------------------------------------------------------- 1. validation = the prediction rule
def test_image_nodata_finds_exactly_the_reflectance_nodata_in_normalised_chips(tmp_path):
    from cloudkd.common.infer import nodata_mask
    from cloudkd.data import read_chip, resolve_split
    from cloudkd.data.dataset import ChipDataset, image_nodata
    from cloudkd.data.chips import load_index

    _two_chip_dataset(tmp_path / "d")
    split = resolve_split(tmp_path / "d")
    ds = ChipDataset(load_index(split))
    for i, cid in enumerate(ds.index["chip_id"]):
        want = nodata_mask(read_chip(split.chip_dir(cid)))
        got = image_nodata(ds[i]["image"][None])[0]
        assert np.array_equal(got, want), cid
    assert image_nodata(ds[list(ds.index["chip_id"]).index("val")]["image"]).sum() == 8 * 32


@pytest.mark.parametrize("threshold,cloud_predicted", [(0.5, True), (0.6, False)])
def test_validation_scores_the_prediction_rule_nodata_clear_at_the_runs_threshold(tmp_path, threshold,
                                                                                   cloud_predicted):
    """A model predicting cloud probability sigmoid(0.3) = 0.574 everywhere, validated through the data module:
    at threshold 0.5 it predicts cloud everywhere, but the nodata strip counts clear as every prediction path
    makes it (not as false cloud); at 0.6 it predicts nothing."""
    from cloudkd.data.datamodule import CloudDataModule
    from cloudkd.student.module import StudentModule

    folds = _two_chip_dataset(tmp_path / "d")
    module = StudentModule("unet-xs", threshold=threshold)
    module.model = Constant(0.3)
    dm = CloudDataModule(tmp_path / "d", folds=folds, val_fold=0, batch_size=1, crop=32)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]
    c = module._val
    n, nodata = 32 * 32, 8 * 32
    if cloud_predicted:
        assert (c.tp, c.fp, c.fn, c.tn) == (n - nodata, 0, 0, nodata)
        assert logged["val_jaccard"] == pytest.approx(1.0)
    else:
        assert (c.tp, c.fp, c.fn, c.tn) == (0, 0, n - nodata, nodata)
        assert logged["val_jaccard"] == 0.0
