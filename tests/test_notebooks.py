"""The four notebooks execute top to bottom on small generated data, in order (each builds on the one before)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ORDER = ["01_explore_data", "02_teacher_nnunet", "03_distill_student", "04_onboard_export"]


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    env = {"CLOUDKD_NB_DATA": str(root / "data"), "CLOUDKD_NB_WORK": str(root / "work"), "CLOUDKD_NB_QUICK": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_notebooks_are_stored_without_outputs():
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
        assert "parameters" in nb.cells[1].metadata.get("tags", []), name  # the parameters cell comes first


def test_notebooks_run_in_order(nb_env):
    work = nb_env / "work"
    nb = run_notebook("01_explore_data")
    assert "training chips from" in _text(nb) and (work / "folds.csv").is_file() and (work / "01_chips.png").is_file()
    nb = run_notebook("02_teacher_nnunet")
    assert "teacher global Jaccard" in _text(nb)
    assert len(list((work / "teacher_soft").glob("*.tif"))) == 12
    nb = run_notebook("03_distill_student")
    text = _text(nb)
    assert "student: global Jaccard" in text and (work / "student" / "student.pt").is_file()
    nb = run_notebook("04_onboard_export")
    text = _text(nb)
    assert "student_onnx_int8" in text and (work / "export" / "model_int8.onnx").is_file()
    assert (work / "submission.zip").is_file() and (work / "downlink.png").is_file()
