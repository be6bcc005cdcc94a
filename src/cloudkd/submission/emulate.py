"""``cloudkd runtime-test``: run a submission.zip the way the On Cloud N runtime does, locally.

1. A scratch root laid out like ``/codeexecution``: ``data/test_features`` (a copy of the chips, made read-only;
   root ignores file modes, so under root it stays writable), ``submission/submission.zip``;
2. the zip is unpacked into the root (its top level lands there, as ``unzip ./submission/submission.zip -d ./``);
   the run fails if there is no ``main.py`` or no ``*.tif`` under ``data/test_features``;
3. ``python main.py`` with no arguments, in the root, as a subprocess (``CLOUDKD_ROOT`` points main.py at the
   scratch root instead of /codeexecution), under the interpreter ``python`` (the command line's default: the
   runtime's Python 3.9 + torch 1.8.0 built by ``make runtime-env`` when it exists, see :func:`default_python`);
   the verdict names it and the versions of the libraries it imports (:func:`interpreter_versions`);
4. the runtime's validation (:mod:`cloudkd.submission.validate`): no missing file, no extra file, shape,
   values, size; with labels, the leaderboard metric (global Jaccard);
5. main.py's run summary (:func:`read_summary`: the one ``cloudkd-summary {...}`` JSON line of its log; the
   verdict reads it, never the wording of the other log lines): the verdict fails when it is missing or malformed,
   when its counts differ from what lies on disk (chips expected, masks written), when it gives a fallback mask
   (all-clear, or bands filled in) to a chip whose bands read fine (a sound chip with data, of the folder's chip
   shape: e.g. a zip packed for another chip size), or when labels were given and no score came out. A fallback
   the contract documents (a chip with a band missing or unreadable, or a chip that breaks the chip-shape rule,
   e.g. 511 x 512 among 512 x 512 chips) is listed in ``fallback_documented``, not failed. The summary itself is
   ``summary`` in the verdict.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional

from ..common.errors import DataError
from ..common.io import atomic_write
from ..data.roots import resolve_split
from .validate import reasons, validate


def _read_only(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for f in filenames:
            if not os.path.islink(os.path.join(dirpath, f)):  # a link has no mode of its own (it may even loop)
                os.chmod(os.path.join(dirpath, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _writable(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, stat.S_IRWXU)
        for f in filenames:
            if not os.path.islink(os.path.join(dirpath, f)):
                os.chmod(os.path.join(dirpath, f), stat.S_IRUSR | stat.S_IWUSR)


#: the start of the one log message of main.py that holds its run summary as JSON (``SUMMARY_PREFIX`` in main.py);
#: the message stands alone on its line or after main.py's ``asctime levelname`` (asctime holds a space)
SUMMARY_PREFIX = "cloudkd-summary "
_SUMMARY_LINE = re.compile(r"^(?:\S+ \S+ [A-Z]+ )?" + re.escape(SUMMARY_PREFIX) + r"(?P<json>.*)$")
#: the fields the verdict reads, with their types (main.py writes more: tta, model, assets, device, torch)
SUMMARY_FIELDS = {"chips_expected": int, "chips_written": int, "fallback": dict, "failed": dict,
                  "threshold": float, "seconds": float}
_KIND_NAMES = {int: "an integer", float: "a number", dict: "an object"}


def read_summary(log: str) -> tuple:
    """main.py's run summary from its log: (the summary dict, None), or (None, why it is missing or malformed)."""
    found = [m.group("json") for m in (_SUMMARY_LINE.match(line.rstrip()) for line in log.splitlines()) if m]
    if not found:
        return None, f"main.py's log has no run summary (a line '{SUMMARY_PREFIX}{{...}}'), so its fallbacks and " \
                     f"counts cannot be checked"
    if len(found) > 1:
        return None, f"main.py's log has {len(found)} run summaries ('{SUMMARY_PREFIX}{{...}}' lines); one is expected"
    try:
        summary = json.loads(found[0])
    except ValueError as exc:
        return None, f"main.py's run summary is malformed: not JSON ({exc})"
    if not isinstance(summary, dict):
        return None, f"main.py's run summary is malformed: a JSON {type(summary).__name__}, not an object"
    for key, kind in SUMMARY_FIELDS.items():
        value = summary.get(key)
        ok = (isinstance(value, (int, float)) if kind is float else isinstance(value, kind)) and \
            not isinstance(value, bool)
        if key not in summary or not ok:
            return None, (f"main.py's run summary is malformed: {key!r} is "
                          f"{'missing' if key not in summary else repr(value)[:60]}, not {_KIND_NAMES[kind]}")
        if kind is dict and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return None, f"main.py's run summary is malformed: {key!r} is not a {{chip_id: reason}} object"
    return summary, None


def _chip_is_sound(chip_dir: Path) -> bool:
    """True when the chip's four bands read cleanly (present, readable, uint16, 2-D, one shape) and hold data: a
    chip main.py should have predicted rather than given a fallback. The TIFF headers are checked first, so a band
    of another size is refused without decoding it."""
    import numpy as np
    import tifffile

    from ..data.chips import read_chip_dn
    from ..data.normalise import BANDS

    shapes = set()
    for band in BANDS:
        try:
            with tifffile.TiffFile(chip_dir / f"{band}.tif") as tif:
                series = tif.series[0]
                shapes.add(tuple(int(d) for d in series.shape if int(d) != 1))
                if series.dtype is None or np.dtype(series.dtype) != np.uint16:
                    return False
        except Exception:
            return False
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        return False
    try:
        dn = read_chip_dn(chip_dir)
    except Exception:  # DataError, or an OS error on a broken link
        return False
    return bool(dn.any())  # an all-nodata chip is rightly all clear


def _summary_reasons(summary: dict, features: Path, validated: dict) -> tuple:
    """(chips main.py gave an unjustified fallback, failure reasons, {chip: why} of the documented fallbacks), from
    main.py's run summary and what really lies in the emulated root. The summary's counts must be the truth: its
    chips_expected the chip folders of ``test_features``, its chips_written the masks of those chips present in
    ``predictions`` (``validated``: the validator's verdict), its fallback chips chips of the folder. A fallback
    chip whose bands read fine fails the verdict; one that breaks the one chip-shape rule
    (:func:`cloudkd.data.chips.chip_shape_problems`: not square, or not the size of the folder's chips, e.g.
    511 x 512) or whose bands do not read is the documented fallback."""
    from ..data.chips import chip_shape_problems
    from .validate import expected_chips

    chips = expected_chips(features)
    out = []
    if summary["chips_expected"] != len(chips):
        out.append(f"main.py's summary counts {summary['chips_expected']} chip(s); test_features holds {len(chips)}")
    present = validated["n_chips"] - len(validated["missing"])
    if summary["chips_written"] != present:
        out.append(f"main.py's summary says it wrote {summary['chips_written']} mask(s); predictions holds "
                   f"{present} of the chips' masks")
    fallback = summary["fallback"]
    unknown = sorted(set(fallback) - set(chips))
    if unknown:
        out.append(f"main.py's summary gives a fallback to {len(unknown)} chip(s) that are not in test_features: "
                   f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
    known = sorted(set(fallback) & set(chips))
    _, misshapen = chip_shape_problems(features, chips)  # the folder's chip size is read from all its chips
    bad = [c for c in known if c not in misshapen and _chip_is_sound(features / c)]
    if bad:
        out.append(f"main.py gave a fallback mask to {len(bad)} chip(s) whose bands read fine: {', '.join(bad[:10])}"
                   f"{' ...' if len(bad) > 10 else ''} (e.g. {bad[0]}: {fallback[bad[0]][:160]})")
    documented = {c: fallback[c] for c in known if c not in bad}
    return bad, out, documented


def describe_summary(summary: dict) -> str:
    """One line of main.py's run summary: counts, fallbacks, threshold, dilation, weights fingerprint, seconds."""
    model = summary.get("model") or "?"
    digest = (summary.get("assets") or {}).get("model.pt") if isinstance(summary.get("assets"), dict) else None
    return (f"{summary['chips_written']} of {summary['chips_expected']} masks written, "
            f"{len(summary['fallback'])} fallback, {len(summary['failed'])} failed; model {model}"
            f"{f' (model.pt sha256 {digest[:12]})' if isinstance(digest, str) else ''}, threshold "
            f"{summary['threshold']}, dilate {summary.get('dilate', 0)} px, tta {summary.get('tta')}, "
            f"{summary['seconds']} s")


#: ``make runtime-env`` (scripts/runtime_env.sh) links the runtime's environment here, in the repository root
RUNTIME_LINK = Path(__file__).resolve().parents[3] / ".runtime-py39"

#: what the verdict reports of an interpreter: python, then each library's import name -> distribution name
_LIBRARIES = {"torch": "torch", "numpy": "numpy", "tifffile": "tifffile", "pillow": "pillow", "pandas": "pandas",
              "segmentation_models_pytorch": "segmentation-models-pytorch", "timm": "timm"}
# Python 3 of any age: importlib.metadata where there is one, the module's __version__ otherwise; never imports
# torch when its metadata answers (seconds saved per run)
_PROBE = """
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
libs = json.loads(sys.argv[1])
try:
    from importlib.metadata import version
except ImportError:
    version = None
for mod, dist in libs.items():
    v = None
    if version is not None:
        try:
            v = version(dist)
        except Exception:
            v = None
    if v is None:
        try:
            v = str(getattr(__import__(mod), "__version__", "unknown"))
        except Exception:
            v = None
    out[mod] = v
print(json.dumps(out))
"""


def runtime_env_python() -> Optional[Path]:
    """The interpreter of the runtime's environment (``$CLOUDKD_RUNTIME_ENV``, else the repository's
    ``.runtime-py39``) when it has been built, else None."""
    env = os.environ.get("CLOUDKD_RUNTIME_ENV")
    root = Path(env) if env else RUNTIME_LINK
    py = root / "bin" / "python"
    return py if (root / ".cloudkd-runtime-env").is_file() and os.access(py, os.X_OK) else None


def default_python() -> tuple:
    """(interpreter, why): the runtime's environment when built, else the current interpreter."""
    py = runtime_env_python()
    if py is not None:
        return str(py), f"the runtime's environment {py} (make runtime-env)"
    return sys.executable, (f"the current interpreter {sys.executable}: the runtime's environment is not built "
                            f"(make runtime-env builds it)")


def interpreter_versions(python: str) -> dict:
    """{'python': '3.9.2', 'executable': ..., 'torch': '1.8.0', ... (None: not installed)} of an interpreter.
    DataError when it does not run."""
    try:
        p = subprocess.run([python, "-c", _PROBE, json.dumps(_LIBRARIES)], capture_output=True, text=True,
                           timeout=120)
    except OSError as exc:
        raise DataError(f"{python}: cannot run it as a Python interpreter ({exc.strerror or exc})") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"{python}: did not answer within 120 s when asked for its version") from None
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    except (ValueError, IndexError):
        out = None
    if not isinstance(out, dict):
        why = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1][:200]
        raise DataError(f"{python}: is not a working Python interpreter ({why})")
    return out


def describe_versions(v: dict) -> str:
    """'Python 3.9.2, torch 1.8.0, numpy 1.20.3, ...' (libraries that are not installed are left out)."""
    names = {"segmentation_models_pytorch": "smp"}
    return ", ".join([f"Python {v.get('python')}"] + [f"{names.get(k, k)} {v[k]}" for k in _LIBRARIES if v.get(k)])


def runtime_test(zip_path: os.PathLike | str, data: os.PathLike | str, labels: Optional[os.PathLike | str] = None,
                 json_out: Optional[os.PathLike | str] = None, size: Optional[int] = None,
                 keep: Optional[os.PathLike | str] = None, python: str = sys.executable,
                 timeout: Optional[float] = None, echo: bool = True, force: bool = False) -> dict:
    """Emulate the runtime on the chips of ``data`` (a dataset root or a ``*_features`` folder); a verdict dict.

    ``keep``: the emulated /codeexecution folder, kept afterwards (a relative path is taken from the current
    folder). By the output policy it must be new, empty, or a folder runtime-test made before (replaced only with
    ``force``), and it lies apart from the zip, the data and the labels."""
    from ..common.outputs import check_folder, claim_folder, folder_lock, outputs_apart

    zip_path = Path(zip_path)
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{zip_path}: not a zip file")
    data = Path(data)
    features = data if data.name.endswith("_features") else resolve_split(data, "test").features_dir
    if not features.is_dir():
        raise DataError(f"{features}: features folder does not exist")
    if labels is not None:
        labels = Path(labels)
        labels = labels / "test_labels" if (labels / "test_labels").is_dir() else labels
        if not labels.is_dir():
            raise DataError(f"{labels}: labels folder does not exist")
    outputs_apart([keep, json_out], [zip_path, data, features, labels])
    if keep:
        keep = Path(keep).absolute()  # main.py runs in it: a relative path would point elsewhere from there
        check_folder(keep, RUNTIME_KIND, force, "--keep")
    if os.sep in str(python):  # main.py runs in the emulated root: a relative interpreter path would miss there
        python = os.path.abspath(python)
    versions = interpreter_versions(python)  # the interpreter is checked before anything is written
    if not keep:
        return _emulate(Path(tempfile.mkdtemp(prefix="cloudkd-runtime-")), False, zip_path, features, labels,
                        json_out, size, python, versions, timeout, echo)
    with folder_lock(keep):
        claim_folder(keep, RUNTIME_KIND, force, "--keep")
        return _emulate(keep, True, zip_path, features, labels, json_out, size, python, versions, timeout, echo)


#: the kind of content of a folder runtime-test --keep made (the output policy's mark)
RUNTIME_KIND = "runtime-root"


def _emulate(root: Path, keep: bool, zip_path: Path, features: Path, labels: Optional[Path], json_out, size,
             python: str, versions: dict, timeout: Optional[float], echo: bool) -> dict:
    """The emulation itself in ``root`` (an empty folder, removed afterwards unless ``keep``)."""
    verdict = {"ok": False, "n_chips": 0, "missing": [], "extra": [], "invalid": {}, "seconds": None,
               "returncode": None, "jaccard": None, "reasons": [], "root": str(root), "python": str(python),
               "versions": versions, "summary": None, "fallback": [], "fallback_documented": {}}
    try:
        # links are copied as links, as the runtime would mount them: a broken link or a loop is main.py's to
        # survive, not a reason for the emulator to stop before main.py runs
        shutil.copytree(features, root / "data" / "test_features", symlinks=True)
        meta = features.parent / "test_metadata.csv"
        if meta.is_file():
            shutil.copy(meta, root / "data" / "test_metadata.csv")
        _read_only(root / "data")
        (root / "submission").mkdir()
        shutil.copy(zip_path, root / "submission" / "submission.zip")
        with zipfile.ZipFile(root / "submission" / "submission.zip") as z:
            z.extractall(root)
        if not (root / "main.py").is_file():
            verdict["reasons"] = ["the zip has no main.py at its top level"]
            return verdict
        if not any((root / "data" / "test_features").rglob("*.tif")):
            verdict["reasons"] = ["no *.tif under data/test_features"]
            return verdict
        if size is None:
            cfg_path = root / "assets" / "config.json"
            size = json.loads(cfg_path.read_text()).get("chip_size", 512) if cfg_path.is_file() else 512
        env = {**os.environ, "CLOUDKD_ROOT": str(root)}
        if os.path.realpath(str(python)) != os.path.realpath(sys.executable):
            # another interpreter (the runtime's Python 3.9) must not see this one's module paths
            for var in ("PYTHONPATH", "PYTHONHOME"):
                env.pop(var, None)
        t0 = time.perf_counter()
        with open(root / "main.log", "w") as logf:
            proc = subprocess.Popen([python, "main.py"], cwd=root, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                logf.write(line)
                if echo:
                    print("  | " + line.rstrip(), flush=True)
            proc.wait(timeout=timeout)
        verdict["seconds"] = round(time.perf_counter() - t0, 2)
        verdict["returncode"] = proc.returncode
        verdict.update(validate(root / "data" / "test_features", root / "predictions", (size, size)))
        verdict["reasons"] = reasons(verdict)
        if proc.returncode != 0:
            verdict["ok"] = False
            # the log of a root that is not kept goes with it: point to what the user sees instead
            where = (f"log: {root / 'main.log'}" if keep else
                     f"{'its log is above' if echo else 'the end of its log follows'}; --keep FOLDER keeps main.log")
            verdict["reasons"].insert(0, f"main.py exited with code {proc.returncode} ({where})")
        log_text = (root / "main.log").read_text()
        verdict["summary"], problem = read_summary(log_text)
        if problem:
            why = [problem]
        else:
            verdict["fallback"], why, verdict["fallback_documented"] = _summary_reasons(
                verdict["summary"], root / "data" / "test_features", verdict)
        if why:
            verdict["ok"] = False
            verdict["reasons"].extend(why)
        if labels is not None:
            no_score = None
            if verdict["missing"] or verdict["invalid"]:
                no_score = "the predictions are incomplete or invalid"
            else:
                from ..common.metrics import EmptyUnionError
                from ..evaluate.scoring import score_folder

                try:
                    report = score_folder(root / "predictions", labels)
                except (DataError, EmptyUnionError) as exc:
                    no_score = str(exc).splitlines()[0]
                else:
                    verdict["jaccard"] = report.jaccard
                    if report.jaccard is None:
                        no_score = "; ".join(
                            ([f"{len(report.missing)} chip(s) of the labels have no prediction"]
                             if report.missing else []) + report.invalid[:3])
            if verdict["jaccard"] is None:
                verdict["ok"] = False
                verdict["reasons"].append(f"labels were given ({labels}) but no score came out: {no_score}")
        verdict["log"] = log_text[-5000:]
        return verdict
    finally:
        if json_out:
            atomic_write(json_out, lambda t: Path(t).write_text(json.dumps(
                {k: v for k, v in verdict.items() if k != "log"}, indent=2)))
        if not keep:
            _writable(root)
            shutil.rmtree(root, ignore_errors=True)
