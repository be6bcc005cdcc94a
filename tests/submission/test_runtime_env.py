"""The packed submission run under the On Cloud N runtime's own interpreter and libraries: Python 3.9 with the
packages of ``submission/runtime-requirements.txt`` (torch 1.8.0, numpy 1.20.3, tifffile 2021.8.8, pillow 8.2.0,
pandas 1.2.5, segmentation-models-pytorch 0.2.1, timm 0.4.12, pytorch-lightning 1.4.1, ...), built without Docker
by ``make runtime-env`` (scripts/runtime_env.sh; ``make test`` builds it first); and that pin list being the one
source of the Dockerfile and of ``make runtime-env``.

Without that environment, or with one built from another pin list, these tests FAIL, naming the command that
builds it: a skip would hide exactly the newer-API call this file exists to catch."""

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cloudkd.cli import app
from cloudkd.data import read_mask, resolve_split
from cloudkd.student.predict import predict_folder
from cloudkd.student.runs import load_student
from cloudkd.submission.emulate import _LIBRARIES, interpreter_versions, runtime_test
from cloudkd.submission.pack import pack

from conftest import SCRIPT, _runtime_env_check, invoke, wedged_copy
from test_submission import _broken_features, smp_run

SIZE = 96  # the small generated chips
runner = CliRunner()

REPO = Path(__file__).resolve().parents[2]
#: the one list of the runtime's packages, read by the Dockerfile and by scripts/runtime_env.sh
PINS_FILE = REPO / "submission" / "runtime-requirements.txt"


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path=PINS_FILE) -> dict:
    """{normalised distribution name: version} of a pin list (comments, blank lines and pip options skipped)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[_dist(name)] = version
    return pins


#: the versions the verdict reports, from the pin list (Debian bullseye's python3.9 is 3.9.2, the runtime's 3.9.7)
RUNTIME_VERSIONS = {lib: read_pins()[_dist(dist)] for lib, dist in _LIBRARIES.items()}


@pytest.fixture(scope="module")
def packed_tta(student, tmp_path_factory):
    z = tmp_path_factory.mktemp("zip_rt") / "submission.zip"
    pack(student, z, threshold=0.5, tta=True, batch_size=3, chip_size=SIZE)
    return z


def _ran_under_the_runtime(v):
    assert v["versions"]["python"].startswith("3.9."), v["versions"]
    for lib, want in RUNTIME_VERSIONS.items():
        assert (v["versions"][lib] or "").split("+")[0] == want, (lib, v["versions"])


def test_the_environment_has_the_runtime_versions_and_imports_them(runtime_python):
    v = interpreter_versions(runtime_python)
    _ran_under_the_runtime({"versions": v})
    # what is imported, not only what the metadata says
    out = subprocess.run([runtime_python, "-c", "import sys, torch, numpy, PIL, tifffile, pandas, "
                          "segmentation_models_pytorch as smp; print(sys.version_info[:2], torch.__version__, "
                          "numpy.__version__, PIL.__version__, smp.__version__)"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(3,", "9)", "1.8.0", "1.20.3", "8.2.0", "0.2.1"], out.stdout
    # every package of the pin list, at its pinned version, and nothing it needs is missing
    seen = subprocess.run([runtime_python, "-c", "import json, sys; from importlib.metadata import version; "
                           "print(json.dumps({d: version(d) for d in sys.argv[1:]}))", *read_pins()],
                          capture_output=True, text=True, timeout=300)
    assert seen.returncode == 0, seen.stderr
    assert {_dist(k): v.split("+")[0] for k, v in json.loads(seen.stdout).items()} == read_pins()
    # the runtime image's own libraries import under Python 3.9 / torch 1.8 (Lightning and its tensorboard too)
    out = subprocess.run([runtime_python, "-c", "import pytorch_lightning, albumentations, rasterio, typer, loguru, "
                          "torchvision; print(pytorch_lightning.__version__, albumentations.__version__, "
                          "rasterio.__version__)"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["1.4.1", "1.0.3", "1.2.6"], out.stderr[-2000:]


def test_one_pin_list_feeds_the_dockerfile_and_make_runtime_env(runtime_python, tmp_path):
    """The Dockerfile and scripts/runtime_env.sh install submission/runtime-requirements.txt and carry no pin of
    their own; the script's version check and its stamp come from that file, so a changed pin rebuilds the cached
    environment and a changed comment does not."""
    pins = read_pins()
    assert {"torch", "torchvision", "pytorch-lightning", "segmentation-models-pytorch", "albumentations", "numpy",
            "pandas", "tifffile", "rasterio", "pillow", "typer", "loguru"} <= set(pins)  # CONTRACT.md's image
    docker = (REPO / "Dockerfile").read_text()
    script = SCRIPT.read_text()
    for text in (docker, script):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not [f"{d}=={v}" for d, v in pins.items() if re.search(rf"(?i)\b{re.escape(d)}=={re.escape(v)}", code)]
    # the Dockerfile copies the file and installs exactly it
    copies = re.findall(r"^COPY\s+(\S+)\s+(\S+)\s*$", docker, re.M)
    dest = [d for src, d in copies if src == "submission/runtime-requirements.txt"]
    assert len(dest) == 1
    installs = [line for line in docker.splitlines() if line.startswith("RUN pip install")]
    assert installs == [f"RUN pip install --no-cache-dir --no-deps --only-binary=:all: -r {dest[0]}"]
    # the script reads it by default, installs it, and hands its pins to the version check
    assert 'PINS_FILE="${CLOUDKD_RUNTIME_PINS:-$REPO/submission/runtime-requirements.txt}"' in script
    assert re.search(r'pip install --no-deps --only-binary=:all: \\\n\s+-r "\$PINS_FILE"', script)
    assert re.search(r'"\$PY" -c "\$CHECK" "\$ENV_DIR/versions.json" \\\n\s+"\$\{PINS\[@\]\}"', script)
    # the stamp: an environment built from this list passes --check; a changed pin does not, a comment does
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    shutil.copy(Path(runtime_python).parent.parent / ".cloudkd-runtime-env", env / ".cloudkd-runtime-env")
    (env / "bin" / "python").write_text("#!/bin/sh\n")
    (env / "bin" / "python").chmod(0o755)
    assert _runtime_env_check(env)[0] == 0
    text = PINS_FILE.read_text()
    for name, edit, want in (("comment", text + "# a note\n\n", 0),
                             ("pin", text.replace("\nnumpy==1.20.3\n", "\nnumpy==1.21.0\n"), 1),
                             ("added", text + "onnxruntime==1.8.1\n", 1)):
        (tmp_path / f"{name}.txt").write_text(edit)
        code, out = _runtime_env_check(env, tmp_path / f"{name}.txt")
        assert code == want, (name, out)
        if want:
            assert out == f"runtime-env: {env} is not built from the pins of {tmp_path / f'{name}.txt'}: make " \
                          f"runtime-env builds it"
    # a broken pin list is one line and exit 2, before anything is built
    (tmp_path / "bad.txt").write_text(text + "numpy\n")
    assert _runtime_env_check(env, tmp_path / "bad.txt") == (
        2, f"runtime-env: {tmp_path / 'bad.txt'}: 'numpy' is not a NAME==VERSION pin")
    assert _runtime_env_check(env, tmp_path / "nowhere.txt") == (
        2, f"runtime-env: {tmp_path / 'nowhere.txt'}: pin list not found")


def test_packed_student_under_python39_torch18_writes_the_library_masks_on_chips_with_nodata(
        student, packed_tta, small_data, runtime_python, tmp_path):
    """main.py + the packed unet.py / normalise.py / infer.py under torch 1.8 / numpy 1.20 / Python 3.9 write,
    byte for byte, the masks the library writes under this project's versions, on chips with nodata wedges."""
    test = resolve_split(small_data, "test")
    wedges = wedged_copy(test, tmp_path / "wedged")
    feats = tmp_path / "wedged" / "test_features"
    v = runtime_test(packed_tta, tmp_path / "wedged", keep=tmp_path / "root", echo=False, python=runtime_python)
    assert v["ok"], (v["reasons"], v["log"][-2000:])
    _ran_under_the_runtime(v)
    assert v["python"] == runtime_python and v["n_chips"] == len(wedges)
    assert f"done: {len(wedges)} masks for {len(wedges)} chips (0 with a fallback, 0 failed)" in v["log"]
    s = v["summary"]  # written by main.py under Python 3.9 / torch 1.8
    assert s["torch"].split("+")[0] == "1.8.0" and s["chips_expected"] == s["chips_written"] == len(wedges)
    assert s["fallback"] == {} and s["failed"] == {} and s["threshold"] == 0.5 and s["tta"] is True
    # the library, in main.py's batches of 3 (other batch shapes round differently near the threshold)
    lib = predict_folder(load_student(student), feats, tmp_path / "lib", tta=True, threshold=0.5, batch_size=3,
                         progress=False)
    assert lib["n_chips"] == len(wedges)
    cloud = 0
    for cid, wedge in wedges.items():
        ours = (tmp_path / "root" / "predictions" / f"{cid}.tif").read_bytes()
        mask = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(mask, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid
        assert mask[wedge].max() == 0, cid  # nodata is clear under the runtime too
        assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE) and len(ours) <= 524_288
        cloud += int(mask.sum())
    assert 0 < cloud < len(wedges) * SIZE * SIZE  # not two blank sets compared


def test_broken_chips_each_get_a_valid_mask_and_a_log_line_under_the_runtime(packed_tta, runtime_python, tmp_path):
    kinds = _broken_features(tmp_path / "data")
    v = runtime_test(packed_tta, tmp_path / "data" / "test_features", keep=tmp_path / "root", echo=False,
                     python=runtime_python)
    assert v["ok"], (v["reasons"], v["log"][-2000:])
    _ran_under_the_runtime(v)
    assert v["n_chips"] == len(kinds) and v["missing"] == [] and v["extra"] == [] and v["invalid"] == {}
    log = v["log"]
    pred = tmp_path / "root" / "predictions"
    for cid, kind in kinds.items():
        m = np.array(Image.open(pred / f"{cid}.tif"))
        assert m.shape == (SIZE, SIZE) and set(np.unique(m)) <= {0, 1}, kind
        if kind not in ("good", "half nodata"):
            assert any(line.split(" WARNING ")[-1].startswith(f"{cid}:") for line in log.splitlines()), kind
    for cid in ("zero", "none", "junk"):
        assert np.array(Image.open(pred / f"{cid}.tif")).max() == 0
    assert np.array(Image.open(pred / "half.tif"))[:, : SIZE // 2].max() == 0
    # tifffile 2021.8.8 words its errors differently; what main.py says of each kind is its own
    assert "B08.tif: missing" in log and "B04.tif: wrong shape (48, 48)" in log and "NaN/inf" in log
    assert "B03.tif: unreadable" in log and "B02.tif: unreadable" in log  # the corrupt and the empty file
    assert "(10 with a fallback, 0 failed)" in log
    broken = sorted(c for c, kind in kinds.items() if kind not in ("good", "half nodata"))
    assert sorted(v["summary"]["fallback"]) == broken and list(v["fallback_documented"]) == broken
    assert v["summary"]["chips_written"] == len(kinds) and v["fallback"] == []


def test_an_smp_resnet34_unet_packs_and_runs_under_smp_021(small_data, runtime_python, tmp_path):
    """A model trained with this project's segmentation-models-pytorch, rebuilt by main.py with the runtime's
    smp 0.2.1 / timm 0.4.12 / torch 1.8.0 from the packed state dict, writes the library's masks."""
    run = smp_run(tmp_path, "smp:Unet:resnet34")
    z = tmp_path / "smp.zip"
    pack(run, z, threshold=0.5, batch_size=2, chip_size=SIZE)
    assert json.loads(zipfile.ZipFile(z).read("assets/config.json"))["model"]["encoder"] == "resnet34"
    test = resolve_split(small_data, "test")
    v = runtime_test(z, small_data, keep=tmp_path / "root", echo=False, python=runtime_python)
    assert v["ok"], (v["reasons"], v["log"][-2000:])
    _ran_under_the_runtime(v)
    assert "model Unet on cpu" in v["log"]
    predict_folder(load_student(run), test.features_dir, tmp_path / "lib", batch_size=2, progress=False)
    cloud = 0
    for cid in test.chip_ids():
        ours = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(ours, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid
        cloud += int(ours.sum())
    assert 0 < cloud < len(test.chip_ids()) * SIZE * SIZE


@pytest.mark.parametrize("preset", ["unet-s2d2", "unet-s2d4", "unet-s2d2r"])
def test_a_space_to_depth_student_runs_under_torch18(small_data, runtime_python, tmp_path, preset):
    """The stem's nn.PixelUnshuffle first appeared in torch 1.8.0: main.py rebuilds it there and writes the
    library's masks."""
    from cloudkd.student.models import build_model

    torch.manual_seed(0)
    run = tmp_path / preset
    run.mkdir()
    torch.save(build_model(preset).state_dict(), run / "student.pt")
    (run / "student.json").write_text(json.dumps({"model": preset, "model_kwargs": {}}))
    z = tmp_path / f"{preset}.zip"
    pack(run, z, threshold=0.5, batch_size=3, chip_size=SIZE)
    v = runtime_test(z, small_data, keep=tmp_path / "root", echo=False, python=runtime_python)
    assert v["ok"], (v["reasons"], v["log"][-2000:])
    _ran_under_the_runtime(v)
    test = resolve_split(small_data, "test")
    predict_folder(load_student(run), test.features_dir, tmp_path / "lib", batch_size=3, progress=False)
    for cid in test.chip_ids():
        ours = np.array(Image.open(tmp_path / "root" / "predictions" / f"{cid}.tif"))
        assert np.array_equal(ours, read_mask(tmp_path / "lib" / f"{cid}.tif")), cid


def test_runtime_test_cli_names_the_interpreter_and_versions(packed_tta, small_data, runtime_python, tmp_path):
    r = runner.invoke(app, ["submission", "runtime-test", "--zip", str(packed_tta), "--data", str(small_data),
                            "--labels", str(small_data), "--python", runtime_python, "--json",
                            str(tmp_path / "v.json"), "--quiet"])
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["ok"] and v["python"] == runtime_python
    _ran_under_the_runtime(v)
    assert f"under {runtime_python}: Python 3.9." in r.output
    assert "torch 1.8.0, numpy 1.20.3, tifffile 2021.8.8, pillow 8.2.0, pandas 1.2.5, smp 0.2.1" in r.output
    # without --python: the runtime's environment, and it says so
    r = runner.invoke(app, ["submission", "runtime-test", "--zip", str(packed_tta), "--data", str(small_data),
                            "--quiet"])
    assert r.exit_code == 0, r.output
    assert "main.py runs under the runtime's environment" in r.output and "torch 1.8.0" in r.output


def _cloudkd(args, capsys):
    """``cloudkd ARGS`` through the console entry point: (exit code, the non-empty lines of stdout + stderr)."""
    code, text = invoke(args, capsys)
    return code, [line for line in text.splitlines() if line.strip()]


def test_runtime_test_refuses_a_python_that_is_not_one(packed_tta, small_data, tmp_path, capsys):
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'fake-python: broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    base = ["submission", "runtime-test", "--zip", packed_tta, "--data", small_data, "--keep", tmp_path / "root",
            "--python"]
    for bad, says in ((tmp_path / "nowhere", "--python"), (tmp_path, "--python"), (fake, f"{fake}")):
        code, lines = _cloudkd(base + [bad], capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
        assert not (tmp_path / "root").exists()
    assert "no such interpreter" in _cloudkd(base + [tmp_path / "nowhere"], capsys)[1][0]
    assert "not an executable file" in _cloudkd(base + [tmp_path], capsys)[1][0]
    assert _cloudkd(base + [fake], capsys)[1] == [f"error: {fake}: is not a working Python interpreter "
                                                  f"(fake-python: broken)"]
