"""The house: stage packages in pipeline order, no stage importing a later one, the root CLI only composing."""

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudkd.cli import ALIASES, STAGES, app

PKG = Path(__file__).resolve().parents[1] / "src" / "cloudkd"
#: the pipeline order; a module may import its own stage, an earlier one, or common
ORDER = ["common", "data", "baselines", "teacher", "student", "evaluate", "onboard", "submission"]
TOP = {"cli", "demo", "__init__"}  # the composition at the top may import every stage


def stage_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "cloudkd", module
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path):
    """Absolute cloudkd module names imported by a source file (relative imports resolved)."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("cloudkd"):
                yield node.lineno, mod
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cloudkd"):
                    yield node.lineno, a.name


def test_the_stage_packages_are_the_pipeline():
    found = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert found == sorted(ORDER)
    flat = sorted(p.stem for p in PKG.glob("*.py"))
    assert flat == sorted(TOP)  # no flat modules left at the package top


def test_no_stage_imports_a_later_stage():
    bad = []
    for path in PKG.rglob("*.py"):
        here = stage_of(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
        if here in TOP:
            continue
        for line, mod in imports_of(path):
            there = stage_of(mod)
            if there in TOP or ORDER.index(there) > ORDER.index(here):
                bad.append(f"{path.relative_to(PKG)}:{line} ({here}) imports {mod} ({there})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_backward_import(tmp_path, monkeypatch):
    """The rule above can fail: a data module importing the student is reported."""
    f = PKG / "data" / "_probe_layout.py"
    f.write_text("from ..student.runs import load_student\n")
    try:
        with pytest.raises(AssertionError, match="_probe_layout.py:1 .data. imports cloudkd.student.runs"):
            test_no_stage_imports_a_later_stage()
    finally:
        f.unlink()


def test_help_lists_the_stages_in_pipeline_order_and_hides_the_old_spellings():
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    listed = [m.group(1) for m in re.finditer(r"^│ (\S+) ", out.split("Commands")[1], re.M)]
    assert listed == ["demo"] + [n for n, _ in STAGES], out
    assert not set(ALIASES) & set(listed)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_old_spelling_runs_the_stage_command(alias):
    """`cloudkd train` is `cloudkd student train`: the same function, the same options."""
    group = {"synth": "data", "preview": "data", "validate": "data", "folds": "data", "train": "student",
             "distill": "student", "predict": "student", "score": "evaluate", "real-bench": "evaluate", "audit": "evaluate",
             "export": "onboard", "predict-scene": "onboard", "downlink": "onboard", "bench": "onboard",
             "pack": "submission", "runtime-test": "submission"}[alias]
    runner = CliRunner()
    old = runner.invoke(app, [alias, "--help"], terminal_width=200)
    new = runner.invoke(app, [group, alias, "--help"], terminal_width=200)
    assert old.exit_code == 0 and new.exit_code == 0
    strip = lambda s: s.split("\n", 2)[2]  # noqa: E731 - the usage line names the path
    assert strip(old.output) == strip(new.output)
