"""Student training by Lightning's conventions (issue 31): the cosine schedule as a LambdaLR stepped by Lightning and
logged by its LearningRateMonitor, with the same rate in every epoch as the hand-written schedule it replaced (a new
run, a resumed longer run, and a checkpoint without scheduler state); typer's own range checks on the student CLI."""

import math
import shutil

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from conftest import invoke, one_line_refusal
from cloudkd.student.train import TrainConfig, fit

LR, STEPS = 5e-3, 2


def cosine(epoch: int, epochs: int) -> float:
    """The rate of ``epoch`` in a run of ``epochs``: LR * (1 + cos(pi * epoch / epochs)) / 2, written out here,
    independently of the module."""
    return LR * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


class RatesSeen(pl.Callback):
    """The learning rate every optimiser step of a fit used, by epoch."""

    def __init__(self):
        self.rates = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.rates.setdefault(trainer.current_epoch, []).extend(g["lr"] for g in optimizer.param_groups)


def _fit(data, out, epochs, **kw):
    seen = RatesSeen()
    fit(TrainConfig(data=str(data), out=str(out), model="unet-xs", epochs=epochs, batch_size=4, crop=32, lr=LR,
                    limit_train_batches=STEPS, accelerator="cpu", progress=False, **kw), callbacks=[seen])
    return seen.rates


def _logged_rates(run, version):
    """{epoch: rate} as the run's CSV log holds it (LearningRateMonitor: one row per epoch, at its first step)."""
    log = pd.read_csv(run / "logs" / f"version_{version}" / "metrics.csv").dropna(subset=["lr"])
    assert (log["step"] % STEPS == 0).all(), log
    return {int(s) // STEPS: v for s, v in zip(log["step"], log["lr"])}


def _assert_rates(rates, epochs, first=0):
    assert sorted(rates) == list(range(first, epochs)), rates
    for e, used in rates.items():
        assert len(used) == STEPS and used == pytest.approx([cosine(e, epochs)] * STEPS, rel=1e-9, abs=1e-15), e


def test_every_epoch_trains_and_logs_the_cosine_rate(small_data, tmp_path):
    rates = _fit(small_data, tmp_path / "r", 4)
    _assert_rates(rates, 4)
    assert rates[0] == [LR] * STEPS and 0 < rates[3][0] < rates[2][0] < rates[1][0] < LR
    logged = _logged_rates(tmp_path / "r", 0)
    assert logged == pytest.approx({e: cosine(e, 4) for e in range(4)}, rel=1e-9)


def test_a_resumed_longer_run_continues_its_own_schedule(small_data, tmp_path):
    """The 1-epoch run's checkpoint holds rate 0 (the end of its schedule); resumed to 3 epochs, epochs 1 and 2
    train at the 3-epoch schedule's rates. So does a checkpoint without scheduler state (an older cloudkd's)."""
    _fit(small_data, tmp_path / "r", 1)
    old = shutil.copytree(tmp_path / "r", tmp_path / "old")
    last = old / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert ck["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-15)
    ck["lr_schedulers"] = []  # as the hand-written schedule saved it
    torch.save(ck, last)
    for run in (tmp_path / "r", old):
        rates = _fit(small_data, run, 3, resume=True)
        _assert_rates(rates, 3, first=1)
        assert rates[1][0] == pytest.approx(0.75 * LR)  # not 0, the saved rate
        assert _logged_rates(run, 1) == pytest.approx({1: cosine(1, 3), 2: cosine(2, 3)}, rel=1e-9)


def _train(data, out, *extra):
    return ["student", "train", data, "--out", out, "--model", "unet-xs", "--epochs", 1, "--steps", 1, "--batch", 2,
            "--crop", 32, "--accelerator", "cpu", *extra]


@pytest.mark.parametrize("option,value,says", [
    ("--epochs", 0, "Input should be greater than or equal to 1"),
    ("--batch", -2, "Input should be greater than or equal to 1"),
    ("--val-fold", -1, "Input should be greater than or equal to 0"),
    ("--seed", -1, "Input should be greater than or equal to 0"),
    ("--steps", 0, "Input should be greater than or equal to 1"),
    ("--devices", 0, "Input should be greater than or equal to 1"),
    ("--boundary-ignore", -3, "Input should be greater than or equal to 0"),
    # numbers keep finite(): typer's range lets inf through and calls nan "not >= 0"
    ("--lr", "nan", "must be a finite number, got nan"),
    ("--temperature", "inf", "must be a finite number, got inf"),
])
def test_student_options_out_of_range_are_one_line_naming_the_option(small_data, tmp_path, capsys, option, value,
                                                                      says):
    args = _train(small_data, tmp_path / "run")
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    code, text = invoke(args, capsys)
    one_line_refusal(code, text, f"'{option}': {says}")
    assert not (tmp_path / "run").exists()


def test_student_help_shows_the_ranges(capsys):
    code, text = invoke(["student", "distill", "--help"], capsys)
    assert code == 0 and "x>=1" in text and "x>=0" in text, text


def test_data_module_lines_come_from_the_first_process_only(capsys, monkeypatch):
    """The data module's console lines go through Lightning's rank_zero_only: printed by rank 0, not by the others."""
    from pytorch_lightning.utilities import rank_zero_only

    from cloudkd.data.datamodule import _log

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    _log("from rank 0")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    _log("from rank 1")
    out = capsys.readouterr().out
    assert "from rank 0" in out and "from rank 1" not in out
