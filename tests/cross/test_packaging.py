"""Packaging: `pip install .` declares every third-party package the library imports, from the one list of pins
(requirements.txt, which pyproject.toml reads and `make install` installs)."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "cloudkd"

#: imports that are optional: each sits in a try/except ImportError and the library works without it
OPTIONAL = {
    "IPython": "only to redraw figures inline in a notebook (the inline backend comes with IPython)",
    "ukis_csmask": "the optional peer model (cloudkd says how to install it)",
    "click": "the command's name for the output marks, when typer runs on click (typer 0.2x carries its own)",
}
#: imports that come with a declared package rather than on their own: import name -> the declared package
VIA = {
    "cv2": "albumentations",  # opencv-python-headless
    "affine": "rasterio",
}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    return canon(re.split(r"[\s;\[<>=!~]", req.strip(), maxsplit=1)[0])


def third_party_imports():
    """Top-level import name -> [(file, line, guarded by try/except ImportError)] over src/cloudkd."""
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                for inner in node.body:
                    guarded.update(id(n) for n in ast.walk(inner))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "cloudkd":
                    continue
                found.setdefault(top, []).append((path.relative_to(ROOT), node.lineno, id(node) in guarded))
    return found


def declared_by_the_project():
    """The dependencies `pip install .` declares (setuptools reading pyproject.toml and the files it names)."""
    project = read_configuration(ROOT / "pyproject.toml")["project"]
    return [req_name(r) for r in project["dependencies"]]


def test_the_pins_live_in_one_place():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "dependencies" not in project and "dependencies" in project["dynamic"]
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not [ln for ln in lines if ln.startswith("-")], "setuptools reads requirements.txt: no pip options"
    pins = [req_name(ln) for ln in lines if ln and not ln.startswith("#")]
    assert declared_by_the_project() == pins
    assert pins.index("torch") == 0 and pins.index("torchvision") == 1  # the standard PyPI builds first


def test_every_third_party_import_is_declared():
    declared = set(declared_by_the_project())
    providers = md.packages_distributions()
    missing = []
    for name, where in sorted(third_party_imports().items()):
        if name in OPTIONAL:
            # every file that imports it first tries it under try/except ImportError
            unguarded = sorted({str(f) for f, _, _ in where} - {str(f) for f, _, guarded in where if guarded})
            assert not unguarded, f"optional {name} imported without a try/except ImportError in {unguarded}"
            continue
        dists = {canon(d) for d in providers.get(name, [])}
        assert dists, f"{name} (imported at {where[0][0]}:{where[0][1]}) is not installed"
        if dists & declared:
            continue
        via = VIA.get(name)
        if via is not None and canon(via) in declared and dists & {req_name(r) for r in md.requires(via) or []}:
            continue
        missing.append(f"{name} ({'/'.join(sorted(dists))}, imported at {where[0][0]}:{where[0][1]})")
    assert not missing, "not declared by pyproject.toml/requirements.txt: " + ", ".join(missing)


def test_the_installed_metadata_is_the_projects():
    """What the installed cloudkd declares (after `make install`) is what the project declares."""
    installed = [req_name(r) for r in md.requires("cloudkd") or [] if "extra ==" not in r]
    assert installed == declared_by_the_project()
    for name in ("pytorch-lightning", "albumentations", "nnunetv2", "segmentation-models-pytorch", "onnxruntime",
                 "rasterio"):
        assert name in installed
