"""The trained nnU-Net teacher, in process: cloud probabilities for chips and for batches of tensors.

Two paths, which must agree (a test checks it):

* :meth:`NnUNetTeacher.predict_chip` is nnU-Net's own single-image path
  (``nnUNetPredictor.predict_single_npy_array``: nnU-Net's preprocessing per the plans, sliding-window
  inference with Gaussian tile weighting, optional mirroring TTA, fold ensembling, softmax, export to the
  original shape). ``cloudkd teacher predict`` uses it.
* :meth:`NnUNetTeacher.logits` takes a batch of normalised float32 tensors ``(N, 4, H, W)`` (what the student
  sees during distillation), applies the plans' normalisation per channel with nnU-Net's own preprocessor code,
  and runs nnU-Net's sliding-window prediction per image. It returns one cloud logit per pixel,
  ``z_cloud - z_background``, so ``sigmoid(logit)`` is nnU-Net's softmax probability of cloud.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..common.errors import DataError
from ..common.infer import DEFAULT_THRESHOLD, masks_from_probabilities, nodata_mask
from ..data.normalise import normalise
from .workspace import Workspace

#: nnU-Net's 2d configurations treat an image as a 3-D volume with one slice; this is its "spacing"
SPACING_2D = [999.0, 1.0, 1.0]


def teacher_record(workspace: Workspace) -> dict:
    """``WORKDIR/teacher.json`` (written by ``teacher train``: the model folder and its trained ``folds``), or a
    DataError saying to train one."""
    if not workspace.teacher_json.is_file():
        raise DataError(f"{workspace.teacher_json}: no trained teacher; run 'cloudkd teacher train' first")
    return json.loads(workspace.teacher_json.read_text())


def check_checkpoint(path: os.PathLike | str, fold: Optional[int] = None) -> Path:
    """``path`` when it is a whole nnU-Net checkpoint, else a one-line DataError: missing, empty or cut short (a
    training killed while it saved; torch saves a zip archive, whose directory is written last)."""
    import zipfile

    path = Path(path)
    how = f"train fold {fold} first" if fold is not None else "train the teacher first"
    if not path.is_file():
        raise DataError(f"{path}: no trained teacher checkpoint ({how})")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        again = f"cloudkd teacher train --fold {fold} --force" if fold is not None else "cloudkd teacher train --force"
        why = "empty" if path.stat().st_size == 0 else "cut short or not a torch checkpoint"
        raise DataError(f"{path}: a damaged checkpoint ({why}; a training killed while saving?); train it again "
                        f"({again})")
    return path


class NnUNetTeacher:
    """Load a trained nnU-Net (one results folder, one or more folds) for inference in this process."""

    def __init__(self, model_folder: os.PathLike | str, folds: Sequence[int] = (0,),
                 checkpoint: str = "checkpoint_final.pth", tta: bool = False, device: str = "cpu",
                 tile_step: float = 0.5, workspace: Optional[Workspace] = None,
                 threshold: float = DEFAULT_THRESHOLD):
        import torch

        #: the prediction rule's threshold of this teacher's masks (from_workspace: the one ``teacher
        #: fit-threshold`` recorded for these folds, else the rule's default)
        self.threshold = float(threshold)
        self.model_folder = Path(model_folder)
        for f in folds:
            check_checkpoint(self.model_folder / f"fold_{f}" / checkpoint, f)
        self.folds = tuple(int(f) for f in folds)
        self.tta = tta
        self.device = torch.device(device)
        self._env = workspace.active() if workspace is not None else None
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if self._env is not None:
            self._env.__enter__()  # the trainer class is found through nnUNet_extTrainer
        try:
            self.predictor = nnUNetPredictor(tile_step_size=tile_step, use_gaussian=True, use_mirroring=tta,
                                             perform_everything_on_device=self.device.type == "cuda",
                                             device=self.device, verbose=False, verbose_preprocessing=False,
                                             allow_tqdm=False)
            self.predictor.initialize_from_trained_model_folder(str(self.model_folder), use_folds=self.folds,
                                                                checkpoint_name=checkpoint)
        finally:
            if self._env is not None:
                self._env.__exit__(None, None, None)
        # nnU-Net loads the weights on the CPU and moves the network only inside its sliding-window call; the
        # batched path of logits() calls the network directly, so it has to live on the teacher's device
        self.predictor.network = self.network.to(self.device)
        self.network.eval()

    @classmethod
    def from_workspace(cls, workspace: Workspace, folds: Optional[Sequence[int]] = None, **kwargs) -> "NnUNetTeacher":
        """The model recorded in ``WORKDIR/teacher.json`` by ``teacher train`` (all its trained folds by default)."""
        from .rule import recorded_threshold

        info = teacher_record(workspace)
        folds = folds if folds is not None else info["folds"]
        fitted = recorded_threshold(info, folds)
        if fitted is not None and "threshold" not in kwargs:
            kwargs["threshold"] = fitted
        return cls(info["model_folder"], folds=folds, workspace=workspace, **kwargs)

    @property
    def network(self):
        return self.predictor.network

    @property
    def patch_size(self) -> Tuple[int, ...]:
        return tuple(self.predictor.configuration_manager.patch_size)

    @property
    def n_params(self) -> int:
        from ..common.sizes import count_params

        return count_params(self.network)

    # ------------------------------------------------------------------------------------------------------------
    def predict_chip(self, refl: np.ndarray, threshold: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
        """nnU-Net's own path for one (4, H, W) reflectance chip: (cloud probability float32 (H, W), mask uint8
        by the project's prediction rule: probability above ``threshold`` (None: the teacher's own,
        :attr:`threshold`), nodata pixels clear)."""
        x = normalise(refl)[:, None]  # (4, 1, H, W): one slice
        _, probs = self.predictor.predict_single_npy_array(x, {"spacing": list(SPACING_2D)}, None, None, True)
        prob = np.asarray(probs[1, 0], np.float32)
        t = self.threshold if threshold is None else threshold
        return prob, masks_from_probabilities(prob[None], t, nodata_mask(refl)[None])[0]

    def logits(self, x):
        """Cloud logits (N, 1, H, W) for a batch of normalised inputs (N, 4, H, W) (torch tensor or numpy)."""
        import torch
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        batch = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if batch.ndim != 4 or batch.shape[1] != 4:
            raise ValueError(f"expected a (N, 4, H, W) batch, got shape {batch.shape}")
        pm, cm = self.predictor.plans_manager, self.predictor.configuration_manager
        pre = DefaultPreprocessor(verbose=False)
        data = np.empty((batch.shape[0], batch.shape[1], 1) + batch.shape[2:], np.float32)
        for i, img in enumerate(batch):  # nnU-Net's normalisation per the plans, on (4, 1, H, W) like its 2d data
            seg = np.zeros((1, 1) + img.shape[1:], np.int8)
            data[i] = pre._normalize(img.astype(np.float32)[:, None].copy(), seg, cm,
                                     pm.foreground_intensity_properties_per_channel)
        with torch.no_grad():
            if tuple(batch.shape[2:]) == self.patch_size:
                # one sliding-window tile covers the image: nnU-Net's Gaussian weighting cancels out, so the
                # whole batch goes through the network (and nnU-Net's mirroring) at once
                x4 = torch.from_numpy(data[:, :, 0]).to(self.device)
                params = self.predictor.list_of_parameters
                z = None
                for p in params:
                    if len(params) > 1:
                        self.network.load_state_dict(p)
                    zi = self.predictor._internal_maybe_mirror_and_predict(x4).float().cpu()
                    z = zi if z is None else z + zi
                z = z / len(params)
                res = (z[:, 1] - z[:, 0])[:, None]
            else:
                out = []
                for d in data:
                    z = self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(d))  # (2, 1, H, W)
                    out.append((z[1] - z[0]).float())
                res = torch.stack(out)  # (N, 1, H, W)
        return res.to(x.device) if hasattr(x, "device") else res


def predict_folder(teacher: NnUNetTeacher, features_dir: os.PathLike | str, masks_out: Optional[os.PathLike | str],
                   soft_out: Optional[os.PathLike | str], chip_ids: Optional[Sequence[str]] = None,
                   progress: bool = True, threshold: Optional[float] = None) -> dict:
    """Teacher masks (submission format) and/or soft labels for every chip of a features folder (masks at
    ``threshold``; None: the teacher's own).

    Returns timing: ``n_chips``, ``seconds``, ``ms_per_chip`` (inference only, reading and writing excluded).
    """
    import time

    from ..data.chips import check_chip_shapes, list_chip_ids, read_chip, write_mask
    from ..data.soft import write_soft

    features_dir = Path(features_dir)
    ids = list(chip_ids) if chip_ids is not None else list_chip_ids(features_dir)
    check_chip_shapes(features_dir, ids)  # the one chip-shape rule, before anything is written
    it = ids
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ids, desc="teacher predict", unit="chip")
    infer = 0.0
    for chip_id in it:
        refl = read_chip(features_dir / chip_id)
        t = time.perf_counter()
        prob, mask = teacher.predict_chip(refl, threshold)
        infer += time.perf_counter() - t
        if masks_out is not None:
            write_mask(Path(masks_out) / f"{chip_id}.tif", mask)
        if soft_out is not None:
            write_soft(Path(soft_out) / f"{chip_id}.tif", prob)
    return {"n_chips": len(ids), "seconds": infer, "ms_per_chip": 1000 * infer / max(1, len(ids))}
