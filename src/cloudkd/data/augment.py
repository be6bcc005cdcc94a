"""Training augmentation with albumentations, applied identically to image, label and soft label.

:class:`Augment` is geometric only (random crop, flips, 90-degree rotations, a light affine): brightness is the
main cloud cue and the inputs are fixed-normalised reflectance, so it changes no colour or intensity. The image is float32
(albumentations mishandles some transforms on uint16 4-band arrays). Label and soft label travel together as
one two-channel float32 mask, so every geometric transform moves them with the image; the affine interpolates
them linearly and the label is re-binarised at 0.5 afterwards. ``Augment(seed=...)`` draws every decision from
one seeded generator; :func:`seed_worker` reseeds it in each DataLoader worker (forked workers would otherwise
repeat each other's crops).

:func:`cloud_paste` works on whole training batches (tensors): clouds and their labels copied from a cloudy
chip onto a low-cover chip of the same batch. :func:`reflectance_gain` (also on batches) darkens a share of the
chips by a random gain, labels unchanged: a whole scene seen under a lower sun or over darker ground, whose cloud
is still cloud (issue 30: real L2A ground and cloud are darker than the generator's).

Samples are dicts of numpy arrays in the dataset's layout: ``image`` (4, H, W), ``mask`` (1, H, W) and
optionally ``soft`` (1, H, W).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np


class Augment:
    def __init__(self, crop: Optional[int] = 256, flips: bool = True, rot90: bool = True, affine_p: float = 0.3,
                 seed: Optional[int] = None):
        import albumentations as A
        import cv2

        ops = []
        if crop:
            ops.append(A.RandomCrop(crop, crop, pad_if_needed=True, border_mode=cv2.BORDER_REFLECT_101))
        if flips:
            ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if rot90:
            ops.append(A.RandomRotate90(p=0.5))
        if affine_p > 0:
            ops.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                                interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_LINEAR,
                                border_mode=cv2.BORDER_REFLECT_101, p=affine_p))
        self.crop = crop
        self.compose = A.Compose(ops)
        self.reseed(seed)

    def reseed(self, seed: Optional[int]) -> None:
        """Draw every random decision from one generator seeded with ``seed`` (None: OS entropy).

        One generator shared by all transforms: albumentations' own ``seed=`` gives each transform a generator
        of the same seed, so e.g. the horizontal and the vertical flip would always fire together.
        """
        import random

        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, sample: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        image = np.ascontiguousarray(sample["image"].transpose(1, 2, 0), dtype=np.float32)
        keys = [k for k in ("mask", "soft") if k in sample]
        out = dict(sample)
        if keys:
            targets = np.stack([sample[k][0].astype(np.float32) for k in keys], axis=-1)
            res = self.compose(image=image, mask=targets)
            t = res["mask"]
            for i, k in enumerate(keys):
                ch = t[..., i]
                out[k] = ((ch > 0.5).astype(np.float32) if k == "mask" else np.clip(ch, 0, 1))[None]
        else:
            res = self.compose(image=image)
        out["image"] = np.ascontiguousarray(res["image"].transpose(2, 0, 1))
        return out


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed every :class:`Augment` of the worker's dataset from the worker's torch
    seed (the loader's base seed, drawn from the seeded main process each epoch, plus the worker id), so workers
    differ from each other and a seeded run repeats exactly."""
    import torch

    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for tf in _augments(info.dataset):
        tf.reseed(torch.initial_seed() % 2 ** 32)


def _augments(dataset):
    """The :class:`Augment` transforms of a dataset (a ChipDataset or a ConcatDataset of them)."""
    parts = getattr(dataset, "datasets", [dataset])
    return [d.transform for d in parts if isinstance(getattr(d, "transform", None), Augment)]


def cloud_paste(batch: Dict[str, "torch.Tensor"], p: float, generator: "torch.Generator", low: float = 0.1,
                high: float = 0.3, feather: int = 2) -> int:
    """"Cloud paste" (the On Cloud N winner's augmentation), in place on a training batch of tensors.

    Each chip whose label covers less than ``low`` of it receives, with probability ``p``, the labelled cloud
    of a random chip of the same batch whose label covers more than ``high``: image (and soft label, when the
    batch has one) are copied where the donor is labelled cloud, the label becomes the union. The image seam is
    feathered over ``feather`` px so it does not teach a sharp edge. Returns the number of chips pasted on.
    """
    import torch
    import torch.nn.functional as F

    if p <= 0 or "mask" not in batch:
        return 0
    mask = batch["mask"]
    frac = mask.flatten(1).mean(1)
    donors = torch.nonzero(frac > high).flatten()
    targets = torch.nonzero(frac < low).flatten()
    if len(donors) == 0 or len(targets) == 0:
        return 0
    draws = torch.rand(len(targets), generator=generator)
    picks = torch.randint(len(donors), (len(targets),), generator=generator)
    n = 0
    for t, u, k in zip(targets.tolist(), draws.tolist(), picks.tolist()):
        if u >= p:
            continue
        d = int(donors[k])
        m = (mask[d:d + 1] > 0.5).to(batch["image"].dtype)
        w = F.avg_pool2d(m, 2 * feather + 1, stride=1, padding=feather, count_include_pad=False) if feather else m
        batch["image"][t] = w[0] * batch["image"][d] + (1 - w[0]) * batch["image"][t]
        if "soft" in batch:
            batch["soft"][t] = m[0] * batch["soft"][d] + (1 - m[0]) * batch["soft"][t]
        batch["mask"][t] = torch.maximum(batch["mask"][t], m[0])
        n += 1
    return n


def reflectance_gain(batch: Dict[str, "torch.Tensor"], p: float, low: float, generator: "torch.Generator",
                     high: float = 1.0) -> int:
    """Gain randomisation, in place on a training batch of tensors: each chip, with probability ``p``, has its
    surface reflectance multiplied by one gain drawn log-uniformly from [``low``, ``high``] (all bands alike);
    labels and soft labels are unchanged. The images are normalised (:func:`cloudkd.data.normalise.normalise`),
    so the gain is applied to the reflectance they stand for and normalised again (clipped as ``normalise``
    clips); nodata pixels stay nodata. Returns the number of chips changed."""
    import torch

    from .dataset import image_nodata
    from .normalise import MEAN, REFL_MAX, STD

    if p <= 0:
        return 0
    if not 0 < low <= high:
        raise ValueError(f"gain range must satisfy 0 < low <= high, got [{low}, {high}]")
    img = batch["image"]
    n = img.shape[0]
    draws = torch.rand(n, generator=generator)
    gains = torch.exp(math.log(low) + (math.log(high) - math.log(low)) * torch.rand(n, generator=generator))
    mean = torch.tensor(MEAN, dtype=img.dtype, device=img.device).view(4, 1, 1)
    std = torch.tensor(STD, dtype=img.dtype, device=img.device).view(4, 1, 1)
    changed = 0
    for i in range(n):
        if float(draws[i]) >= p:
            continue
        nodata = torch.as_tensor(image_nodata(img[i]), device=img.device)
        refl = (img[i] * std + mean) * float(gains[i])
        out = (refl.clamp(0.0, REFL_MAX) - mean) / std
        img[i] = torch.where(nodata[None], img[i], out)
        changed += 1
    return changed
