"""The teacher's workspace: where nnU-Net v2 (unforked) keeps its raw data, plans and results, and the
environment it runs in. The stages around it: :mod:`.convert` (prepare), :mod:`.plans` (plan, preprocess, budgets),
:mod:`.train`, :mod:`.info`, :mod:`.model` (in-process inference).

Everything lives in one workspace folder (default ``runs/nnunet``)::

    WORKDIR/nnUNet_raw/Dataset501_OnCloudN/{imagesTr,labelsTr,dataset.json}
    WORKDIR/nnUNet_preprocessed/Dataset501_OnCloudN/{nnUNetPlans.json,splits_final.json,...}
    WORKDIR/nnUNet_results/Dataset501_OnCloudN/{trainer}__nnUNetPlans__{configuration}/fold_K/
    WORKDIR/teacher.json      which trained model ``teacher predict`` and the in-process teacher use

**Inputs.** The raw dataset holds the project's own normalised inputs (``normalise(read_chip(...))``, float32,
one compressed TIFF per band) and the plans are switched to nnU-Net's ``NoNormalization`` before
preprocessing. nnU-Net's default for these channel names would be a per-image z-score, which throws away the
absolute brightness that separates an overcast chip from a clear one; this way the teacher, the student and
``submission/main.py`` see exactly the same inputs.

**Folds.** ``splits_final.json`` is written from the project's location-grouped folds, so no location is in the
training and validation part of a teacher fold.

**Trainer.** Every run uses the project's ``nnUNetTrainerCloudKD`` (found through ``nnUNet_extTrainer``):
nnU-Net's trainer without the brightness, contrast and gamma augmentation that would destroy the
absolute-reflectance cue (``CLOUDKD_NNUNET_INTENSITY_AUG=1`` restores it), with an optional seed.
``stock=True`` (``--nnunet-defaults``) runs nnU-Net's own ``nnUNetTrainer`` unchanged instead.

**Budgets.** On a GPU nnU-Net's ``2d`` configuration and schedule are used (1000 epochs x 250 iterations) unless
a budget is asked for; ``--seed`` alone does not ask for one. On a CPU the user states a :class:`Budget`;
cloudkd adds a configuration to nnU-Net's plans (inheriting from ``2d``: patch and batch size, normalisation
layer, and optionally a narrower network) and the trainer reads the epochs and iterations per epoch. The
settings of a run are written to ``WORKDIR/training.json`` when it starts, so ``--continue`` resumes that run
without repeating them (options given with it override, e.g. ``--epochs`` to extend it).

**Data-augmentation workers.** ``nnUNet_n_proc_DA`` is the user's value when set; otherwise 0 on a CPU
(augmentation in the training process: seeded, and no worker processes competing for the cores) and nnU-Net's
own default on a GPU (worker processes keep the GPU fed).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..common.errors import DataError
from ..common.io import atomic_write

#: the nnU-Net dataset id and name ``teacher prepare`` uses unless told otherwise
DEFAULT_DATASET_ID = 501
DEFAULT_NAME = "OnCloudN"
PLANS = "nnUNetPlans"
BASE_CONFIGURATION = "2d"
DEFAULT_TRAINER = "nnUNetTrainer"
BUDGET_TRAINER = "nnUNetTrainerCloudKD"
#: nnU-Net's default training and validation iterations per epoch
NNUNET_ITERS = (250, 50)
TRAINER_DIR = Path(__file__).resolve().parent / "trainers"
FILE_ENDING = ".tif"


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def teacher_json(self) -> Path:
        return self.root / "teacher.json"

    def env(self) -> Dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results), "nnUNet_extTrainer": str(TRAINER_DIR)}

    @contextlib.contextmanager
    def active(self, extra: Optional[Dict[str, str]] = None) -> Iterator["Workspace"]:
        """Set nnU-Net's environment variables (and ``extra``) for the duration of the block, then restore them,
        and matplotlib's state: nnU-Net's logger switches the backend to Agg when it is imported (by training, or
        by loading a trained model), which would stop a notebook's later figures from showing, and its progress
        plot sets seaborn's theme for the whole process (``sns.set(font_scale=2.5)``, every epoch), which would
        draw later figures with 30 pt fonts on grey."""
        plot = _plot_state()
        new = {**self.env(), **(extra or {})}
        old = {k: os.environ.get(k) for k in new}
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        os.environ.update(new)
        try:
            yield self
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _restore_plot_state(plot)

    def dataset_folders(self, dataset_id: int) -> List[Path]:
        """Existing ``Dataset{id}_*`` folders in the raw or preprocessed tree."""
        pat = f"Dataset{dataset_id:03d}_*"
        found = {p.name: p for base in (self.raw, self.preprocessed) if base.is_dir() for p in base.glob(pat)
                 if p.is_dir()}
        return [found[k] for k in sorted(found)]

    def dataset_name(self, dataset_id: int) -> str:
        folders = self.dataset_folders(dataset_id)
        if not folders:
            raise DataError(f"{self.raw}: no nnU-Net dataset with id {dataset_id}; run 'cloudkd teacher prepare'")
        return folders[0].name

#: the kind of content of a teacher workspace (the output policy's mark, :mod:`cloudkd.common.outputs`)
WORKSPACE_KIND = "teacher-workspace"
def is_old_workspace(folder: os.PathLike | str) -> bool:
    """Whether ``folder`` is a teacher workspace cloudkd wrote before workspaces carried the output policy's mark:
    a raw dataset in it has the ``dataset.json`` ``teacher prepare`` writes (with its ``cloudkd`` fingerprint)."""
    raw = Path(folder) / "nnUNet_raw"
    for djson in (sorted(raw.glob("Dataset*/dataset.json")) if raw.is_dir() else []):
        try:
            if isinstance(json.loads(djson.read_text()).get("cloudkd"), dict):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def claim_workspace(folder: os.PathLike | str, option: str = "--workdir", mark: bool = False) -> str:
    """The output policy for a teacher workspace: new, empty, or cloudkd's own (reused: its datasets and trained
    folds stay, ``prepare`` decides about each dataset); a file, a folder cloudkd did not write (even with
    ``--force``) or cloudkd's folder of another kind is refused (DataError). ``mark``: write the mark (after the
    work succeeded, so that a refused or failed command leaves nothing). Returns :func:`check_folder`'s state."""
    from ..common.outputs import check_folder, folder_mark, mark_folder

    folder = Path(folder)
    if folder.is_dir() and folder_mark(folder) is None and is_old_workspace(folder):
        state = "replace"
    else:
        state = check_folder(folder, WORKSPACE_KIND, force=True, option=option)  # its own kind: reused
    if mark and folder_mark(folder) is None:
        mark_folder(folder, WORKSPACE_KIND)
    return state


#: matplotlib settings that belong to the backend, not to the look of figures: the backend's own restore sets them
#: (restoring the old values after it would stop a notebook's inline figures from showing)
_BACKEND_KEYS = ("backend", "backend_fallback", "interactive")


def _plot_state() -> Optional[Tuple[str, dict]]:
    """matplotlib's backend and settings now (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a requirement
        return None
    return matplotlib.get_backend(), {k: v for k, v in matplotlib.rcParams.items() if k not in _BACKEND_KEYS}


def _restore_plot_state(state: Optional[Tuple[str, dict]]) -> None:
    """Put back the settings of :func:`_plot_state` that changed (the look of figures), then the backend."""
    if state is None:
        return
    import matplotlib

    backend, style = state
    changed = {k: v for k, v in style.items() if matplotlib.rcParams.get(k) != v}
    if changed:
        matplotlib.rcParams.update(changed)
    if matplotlib.get_backend().lower() == backend.lower():
        return
    if backend.endswith("backend_inline"):  # a notebook: matplotlib.use() alone would not display figures again
        try:
            from IPython import get_ipython

            ip = get_ipython()
        except ImportError:  # pragma: no cover - the inline backend comes with IPython
            ip = None
        if ip is not None:
            ip.run_line_magic("matplotlib", "inline")
            return
    matplotlib.use(backend)


def name_problem(name: str) -> Optional[str]:
    """None when ``name`` can name an nnU-Net dataset (a folder ``DatasetNNN_name`` that nnU-Net finds by its id):
    letters, digits, '_', '-' and '.', starting with a letter or digit; else what is wrong."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        return (f"{name!r} cannot name an nnU-Net dataset: use letters, digits, '_', '-' and '.' (starting with a "
                f"letter or digit), e.g. {DEFAULT_NAME}")
    return None


def dataset_name(dataset_id: int, name: str = DEFAULT_NAME) -> str:
    if not 1 <= dataset_id <= 999:
        raise DataError(f"nnU-Net dataset ids have three digits (1-999), got {dataset_id}")
    problem = name_problem(name)
    if problem:
        raise DataError(problem)
    return f"Dataset{dataset_id:03d}_{name}"

def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

def dump_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda t: Path(t).write_text(json.dumps(obj, indent=2)))

def plans_file(workspace: Workspace, dataset_id: int) -> Path:
    return workspace.preprocessed / workspace.dataset_name(dataset_id) / f"{PLANS}.json"

def model_folder(workspace: Workspace, dataset_id: int, configuration: str, trainer: str) -> Path:
    return workspace.results / workspace.dataset_name(dataset_id) / f"{trainer}__{PLANS}__{configuration}"

def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

def augmentation_workers_env(device: str) -> Dict[str, str]:
    """``nnUNet_n_proc_DA`` for training on ``device``: the user's value when set, else 0 on a CPU and unset
    (nnU-Net's default, worker processes) on a GPU."""
    user = os.environ.get("nnUNet_n_proc_DA")
    if user not in (None, ""):
        return {"nnUNet_n_proc_DA": user}
    return {} if str(device).startswith("cuda") else {"nnUNet_n_proc_DA": "0"}
