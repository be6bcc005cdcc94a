"""Lightning data module: location-grouped folds, augmented training chips, whole validation chips.

Training uses the chips outside ``val_fold`` (plus, optionally, a pool of unlabelled chips to distil on: with
labels, each sample says whether it is labelled and the loss on labels skips the others; offline, ``soft_dir``
then holds the soft labels of those chips too: one folder for all the training chips, e.g. ``cloudkd teacher
predict --soft-out DIR`` run on both feature folders), with
:class:`cloudkd.data.augment.Augment` (random crop, flips, rot90, light affine) applied to image, label and soft
label together. Validation uses the whole chips of ``val_fold`` (locations never seen
in training) without augmentation. ``exclude`` (a file of chip ids, :mod:`cloudkd.data.exclude`) and chips of
fold -1 in the folds file are neither trained on nor validated on; each leaves one logged line.

Seeding: the augmentation draws from a generator seeded with ``seed`` (and the process rank), and every
DataLoader worker reseeds it (:func:`cloudkd.data.augment.seed_worker`), so a seeded run repeats exactly and
workers never repeat each other's crops.

Several processes (DDP): the training chips are shuffled and split by a ``DistributedSampler`` (seeded, reshuffled
every epoch); the validation chips are split without padding (:class:`ShardSampler`), so every validation chip
counts exactly once in the leaderboard metric. Lightning's own distributed sampler pads the validation split to a
multiple of the process count with repeated chips, so the trainer is built with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

import os
from typing import Optional
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import ConcatDataset, DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from .augment import Augment, seed_worker
from ..common.errors import DataError
from .chips import load_index
from .roots import resolve_split
from .dataset import ChipDataset
from .exclude import exclude_ids, exclude_message
from .folds import EXCLUDED, folds_exclusion_line, read_folds, split_by_fold, training_split


@rank_zero_only
def _log(msg: str) -> None:
    """One line on the console (stdout, as the rest of a run's lines), from the first process only (every DDP
    process reads the same tables); Lightning's ``rank_zero_only`` decides which process that is."""
    print(msg, flush=True)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` of ``n``: every index on exactly one process, none repeated."""

    def __init__(self, n: int, rank: int, world: int):
        if world > n:
            raise DataError(f"{n} validation chip(s) cannot be split over {world} processes (each needs one)")
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class CloudDataModule(pl.LightningDataModule):
    def __init__(self, data: os.PathLike | str, folds: Optional[os.PathLike | str] = None, val_fold: int = 0,
                 k: int = 5, batch_size: int = 8, val_batch_size: int = 4, crop: Optional[int] = 256,
                 soft_dir: Optional[os.PathLike | str] = None, unlabelled: Optional[os.PathLike | str] = None,
                 with_labels: bool = True,
                 num_workers: int = 0, augment: bool = True, seed: int = 0,
                 exclude: Optional[os.PathLike | str] = None):
        super().__init__()
        self.exclude = exclude
        #: the chips left out (``exclude`` and fold -1), once :meth:`setup_index` ran
        self.excluded: Optional[list] = None
        self.data, self.folds_path, self.val_fold, self.k = data, folds, val_fold, k
        self.batch_size, self.val_batch_size, self.crop = batch_size, val_batch_size, crop
        self.soft_dir, self.unlabelled = soft_dir, unlabelled
        self.with_labels, self.num_workers, self.augment, self.seed = with_labels, num_workers, augment, seed
        self.train_index: Optional[pd.DataFrame] = None
        self.unlabelled_index: Optional[pd.DataFrame] = None
        self.val_index: Optional[pd.DataFrame] = None

    def setup_index(self) -> None:
        """The training and validation chip tables (no chip is read: cheap). ``setup`` calls it; a trainer calls it
        first, so that bad input (e.g. an unknown id in ``exclude``) fails before anything is written."""
        if self.train_index is not None:
            return
        split = resolve_split(self.data, "train")
        index = load_index(split, require_labels=True)
        ids = []
        if self.exclude is not None:
            ids = exclude_ids(index, self.exclude, split.features_dir)
            _log(exclude_message(len(ids), len(index), self.exclude))
        given = read_folds(self.folds_path) if self.folds_path else None
        if given is not None:
            line = folds_exclusion_line(index, given, ids, self.folds_path)
            if line:
                _log(line)
        # the one split: folds of the full table, the excluded chips then fold -1 (no other chip moves)
        folds = training_split(index, given, ids, k=self.k, seed=self.seed, source=str(self.folds_path))
        excluded = sorted(folds["chip_id"][folds["fold"] == EXCLUDED])
        train, val = split_by_fold(index, folds, self.val_fold)
        for part, rows in (("training", train), ("validation", val)):
            if rows.empty and excluded:
                raise DataError(f"no {part} chip left (fold {self.val_fold} validates) after leaving out "
                                f"{len(excluded)} chip(s)")
        self.train_index, self.val_index, self.excluded = train, val, excluded
        if self.unlabelled is not None:  # the pool's table too: an unfinished or broken pool fails here
            pool = Path(self.unlabelled)
            self.unlabelled_index = load_index(resolve_split(
                pool, "unlabelled" if (pool / "unlabelled_features").is_dir() else None), require_labels=False)

    def setup(self, stage: Optional[str] = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        self.setup_index()
        tf = Augment(self.crop, seed=self.seed + 100_003 * self._rank_world()[0]) if self.augment else None
        # with labels and an unlabelled pool, every sample says whether it is labelled (the loss on labels leaves
        # the others out) and the unlabelled ones carry a placeholder mask, so that mixed batches collate
        mixed = True if self.unlabelled is not None and self.with_labels else None
        sets = [ChipDataset(self.train_index, transform=tf, with_labels=self.with_labels, soft_dir=self.soft_dir,
                            labelled_flag=mixed)]
        if self.unlabelled is not None:
            extra = self.unlabelled_index
            # the same soft-label folder: every training sample then carries the same keys (a batch mixing
            # labelled and unlabelled chips collates), and a chip without its soft label is named up front
            sets.append(ChipDataset(extra, transform=tf, with_labels=False, soft_dir=self.soft_dir,
                                    labelled_flag=False if mixed else None))
        self.train_set = sets[0] if len(sets) == 1 else ConcatDataset(sets)
        self.val_set = ChipDataset(self.val_index, with_labels=True)

    def _rank_world(self):
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds, batch_size: int, train: bool) -> DataLoader:
        rank, world = self._rank_world()
        sampler = None
        if world > 1:
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed) if train \
                else ShardSampler(len(ds), rank, world)
        return DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                          drop_last=train and len(ds) >= batch_size * world, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, worker_init_fn=seed_worker)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, False)
