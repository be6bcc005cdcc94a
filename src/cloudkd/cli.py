"""The ``cloudkd`` command line: the stages' sub-apps, composed in the order of the pipeline, and nothing else.

    data -> baseline -> teacher -> student -> evaluate -> onboard -> submission   (+ landsat, demo)

Each stage keeps its commands in its own ``cli.py``. The commands that used to sit at the top level
(``cloudkd train``, ``cloudkd score``, ``cloudkd pack`` ...) still work as hidden aliases of the same functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .baselines import cli as baselines
from .common.cli import at_least, folder_output_check, run
from .data import cli as data
from .data.landsat import cli as landsat
from .evaluate import cli as evaluate
from .onboard import cli as onboard
from .student import cli as student
from .submission import cli as submission
from .teacher import cli as teacher

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cloud detection for Sentinel-2 chips and Landsat-8 patches: an nnU-Net v2 teacher distilled "
                       "into a compact on-board U-Net. The groups follow the pipeline, 1 to 7.")

#: the stages in pipeline order: (name, module with its typer ``app``)
STAGES = (("data", data), ("baseline", baselines), ("teacher", teacher), ("student", student),
          ("evaluate", evaluate), ("onboard", onboard), ("submission", submission), ("landsat", landsat))
for _name, _module in STAGES:
    app.add_typer(_module.app, name=_name)

#: the top-level spellings from before the stage groups: alias -> (stage module, command function)
ALIASES = {
    "synth": data.synth, "preview": data.preview, "validate": data.validate, "folds": data.folds,
    "train": student.train, "distill": student.distill, "predict": student.predict,
    "score": evaluate.score, "real-bench": evaluate.real_bench, "audit": evaluate.audit,
    "export": onboard.export, "predict-scene": onboard.predict_scene_cmd, "downlink": onboard.downlink,
    "bench": onboard.bench_cmd,
    "pack": submission.pack, "runtime-test": submission.runtime_test,
}
for _alias, _fn in ALIASES.items():
    app.command(_alias, hidden=True)(_fn)


@app.command()
def demo(
    quick: bool = typer.Option(False, help="Seconds-long variant on a few small chips (used by the tests)."),
    workdir: Optional[Path] = typer.Option(None, callback=folder_output_check, help="Where results go (default "
                                                                                    "runs/demo); a folder the demo "
                                                                                    "wrote, or a new one."),
    data: Optional[Path] = typer.Option(None, callback=folder_output_check, help="Where the generated data goes "
                                                                                 "(default data/generated/demo)."),
    n_extra_train: int = typer.Option(0, callback=at_least(0), help="More generated training chips (with labels) "
                                                                    "than the demo's; its test split stays the "
                                                                    "same (a data-scaling run: give it its own "
                                                                    "--workdir and --data)."),
    force: bool = typer.Option(False, help="Rebuild everything instead of reusing what exists."),
):
    """The main job end to end on generated data: generate, fit, predict, score, print the results table."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if quick else DemoConfig()
    if workdir is not None:
        cfg.workdir = str(workdir)
    if data is not None:
        cfg.data = str(data)
    cfg.force = force
    cfg.n_extra_train = n_extra_train
    run_demo(cfg)


def main() -> None:
    """Console entry point: bad input ends with a one-line message naming the file, not a traceback."""
    run(app)


if __name__ == "__main__":
    main()
