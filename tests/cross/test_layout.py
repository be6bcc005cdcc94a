"""The house: stage packages in pipeline order, no stage importing a later one, the root CLI only composing."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cloudkd.cli import ALIASES, STAGES, app
from cloudkd.data import normalise, read_chip, read_label
from cloudkd.student.runs import load_student
from conftest import invoke

PKG = Path(__file__).resolve().parents[2] / "src" / "cloudkd"
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


# ---------------------------------------------------------------------------------------------------------------
# The old top-level spellings: each is the stage command itself (the same function, the same options), and a call
# through it does that command's work on real input
# ---------------------------------------------------------------------------------------------------------------
#: the stage group of every old top-level spelling (its name inside the group is the same)
GROUP = {"synth": "data", "preview": "data", "validate": "data", "folds": "data", "train": "student",
         "distill": "student", "predict": "student", "score": "evaluate", "real-bench": "evaluate",
         "audit": "evaluate", "export": "onboard", "predict-scene": "onboard", "downlink": "onboard",
         "bench": "onboard", "pack": "submission", "runtime-test": "submission"}
#: a one-step student run on 32 px crops (seconds)
TINY_RUN = ["--model", "unet-xs", "--epochs", "1", "--steps", "1", "--batch", "2", "--crop", "32",
            "--accelerator", "cpu"]


def _command(*path):
    """The click command ``cloudkd PATH...`` runs."""
    import typer.main

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _options(cmd):
    """Every parameter of ``cmd``: name, spellings, required, default, type and help."""
    return [(p.name, tuple(p.opts), tuple(p.secondary_opts), p.required, repr(p.default),
             getattr(getattr(p, "type", None), "name", None), getattr(p, "help", None)) for p in cmd.params]


def test_every_old_spelling_has_its_stage_command():
    assert sorted(GROUP) == sorted(ALIASES)


@pytest.mark.parametrize("alias", sorted(GROUP))
def test_an_old_spelling_calls_the_stage_commands_function_with_its_options(alias):
    old, new = _command(alias), _command(GROUP[alias], alias)
    assert old.hidden and not new.hidden
    assert old.callback.__wrapped__ is new.callback.__wrapped__  # typer's wrapper around the one command function
    assert _options(old) == _options(new) and len(_options(old)) > 0


@pytest.fixture(scope="module")
def world(small_data, student, tmp_path_factory):
    """What the old spellings run on: the small dataset, soft labels of its training chips, masks of its test chips
    (the labels shifted by 7 px: neither perfect nor empty), the session's briefly trained unet-s run (its rule:
    threshold 0.5, no dilation) and its submission zip."""
    from types import SimpleNamespace

    import tifffile

    from cloudkd.data import resolve_split
    from cloudkd.data.soft import write_soft
    from cloudkd.student.runs import recorded_rule
    from cloudkd.submission.pack import pack

    root = tmp_path_factory.mktemp("aliases")
    train, test = resolve_split(small_data, "train"), resolve_split(small_data, "test")
    (root / "soft").mkdir()
    for cid in train.chip_ids():
        write_soft(root / "soft" / f"{cid}.tif", 0.1 + 0.8 * read_label(train.label_path(cid)).astype(np.float32))
    (root / "masks").mkdir()
    for cid in test.chip_ids():
        tifffile.imwrite(root / "masks" / f"{cid}.tif", np.roll(read_label(test.label_path(cid)), 7, axis=1))
    assert recorded_rule(student) == (0.5, 0)  # the rule _student_masks applies
    pack(student, root / "submission.zip", chip_size=96)
    return SimpleNamespace(data=small_data, train=train, test=test, soft=root / "soft", masks=root / "masks",
                           run=student, zip=root / "submission.zip")


def _labels(split):
    return {cid: read_label(split.label_path(cid)).astype(bool) for cid in split.chip_ids()}


def _masks(folder):
    import tifffile

    return {p.stem: tifffile.imread(p) for p in sorted(Path(folder).glob("*.tif"))}


def _global_jaccard(pred: dict, labels: dict) -> float:
    inter = sum(int((pred[c].astype(bool) & labels[c]).sum()) for c in labels)
    union = sum(int((pred[c].astype(bool) | labels[c]).sum()) for c in labels)
    return inter / union


def _student_masks(run, split):
    """The run's masks of ``split``'s chips, computed here from its weights (the rule at 0.5, nodata clear)."""
    from cloudkd.common.infer import nodata_mask, predict_masks

    model = load_student(run)
    out = {}
    for cid in split.chip_ids():
        refl = read_chip(split.features_dir / cid)
        out[cid] = predict_masks(model, torch.from_numpy(normalise(refl)[None]), nodata_mask(refl)[None])[0]
    return out


def _synth(w, out):
    yield [out / "gen", "--n-train", 2, "--n-test", 1, "--size", 64, "--workers", 1, "--no-preview",
           "--label-style", "opacity"]
    for split, n in (("train", 2), ("test", 1)):
        chips = sorted((out / "gen" / f"{split}_features").iterdir())
        assert len(chips) == n and all(read_chip(c).shape == (4, 64, 64) for c in chips)
        assert sorted(p.stem for p in (out / "gen" / f"{split}_labels").glob("*.tif")) == [c.name for c in chips]


def _preview(w, out):
    yield [w.data, "--out", out / "p.png"]
    from PIL import Image

    img = np.asarray(Image.open(out / "p.png"))
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0


def _validate(w, out):
    text = yield [w.data]
    n = len(list((w.data / "train_features").iterdir()))
    assert f"{n} chips OK, shape (96, 96)" in text


def _folds(w, out):
    yield [w.data, "--out", out / "folds.csv", "--k", 3]
    import pandas as pd

    f = pd.read_csv(out / "folds.csv")
    assert sorted(f["chip_id"]) == sorted(w.train.chip_ids()) and set(f["fold"]) == {0, 1, 2}
    assert (f.groupby("location")["fold"].nunique() == 1).all()  # a location's chips share one fold


def _trained(run, model="unet-xs"):
    info = json.loads((run / "student.json").read_text())
    state = torch.load(run / "student.pt")
    assert info["model"] == model and info["params"] == sum(v.numel() for k, v in state.items()
                                                            if not k.endswith(("running_mean", "running_var",
                                                                               "num_batches_tracked")))
    return info


def _train(w, out):
    yield [w.data, "--out", out / "run", *TINY_RUN]
    info = _trained(out / "run")
    assert info["teacher_mode"] == "none" and info["config"]["limit_train_batches"] == 1


def _distill(w, out):
    yield [w.data, "--out", out / "run", "--soft", w.soft, *TINY_RUN]
    info = _trained(out / "run")
    assert info["teacher_mode"] == "offline" and info["config"]["kd_weight"] > 0
    assert info["config"]["soft_dir"] == str(w.soft)


def _predict(w, out):
    yield ["--model", w.run, "--features", w.test.features_dir, "--out", out / "masks"]
    got, want = _masks(out / "masks"), _student_masks(w.run, w.test)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[c], want[c]) for c in want)
    assert 0.05 < np.mean([m.mean() for m in want.values()]) < 0.95  # masks of a model that tells cloud apart


def _score(w, out):
    yield ["--pred", w.masks, "--labels", w.test.labels_dir, "--json", out / "s.json"]
    j = _global_jaccard(_masks(w.masks), _labels(w.test))
    assert 0.1 < j < 0.99 and json.loads((out / "s.json").read_text())["jaccard"] == pytest.approx(j, abs=1e-12)


def _real_bench(w, out):
    yield [w.data, "--split", "test", "--out", out / "rb", "--student", w.run, "--peer", "no"]
    import pandas as pd

    row = pd.read_csv(out / "rb" / "summary.csv").iloc[0]
    j = _global_jaccard(_student_masks(w.run, w.test), _labels(w.test))
    assert row["method"] == f"student unet-s ({w.run.name})" and row["jaccard"] == pytest.approx(j, abs=1e-12)


def _audit(w, out):
    yield [w.data, "--out", out / "audit", "--model", w.run]
    import pandas as pd

    a = pd.read_csv(out / "audit" / "audit.csv").set_index("chip_id")
    labels = _labels(w.train)
    assert sorted(a.index) == sorted(labels)
    for cid, lab in labels.items():
        assert a.loc[cid, "label_fraction"] == pytest.approx(lab.mean(), abs=1e-4)


def _export(w, out):
    yield ["--checkpoint", w.run, "--out", out / "exp", "--no-int8", "--no-memory", "--size", 64]
    import onnxruntime as ort

    x = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(str(out / "exp" / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = load_student(w.run)(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def _predict_scene(w, out):
    cid = w.test.chip_ids()[0]
    yield [w.test.features_dir / cid, "--model", w.run, "--out", out / "scene.tif", "--tile", 64, "--overlap", 16]
    import tifffile

    mask = tifffile.imread(out / "scene.tif")
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1}
    # tiled, the mask is the whole chip's where the whole chip's logit is clear of the threshold (0.5: logit 0)
    from cloudkd.common.infer import predict_logits

    refl = read_chip(w.test.features_dir / cid)
    z = predict_logits(load_student(w.run), torch.from_numpy(normalise(refl)[None]))[0, 0].numpy()
    sure = np.abs(z) > 0.5
    assert sure.mean() > 0.2 and (mask[sure] == (z[sure] > 0)).mean() > 0.99


def _downlink(w, out):
    yield ["--pred", w.masks, "--labels", w.test.labels_dir, "--out", out / "dl"]
    d = json.loads((out / "dl" / "downlink.json").read_text())
    masks = _masks(w.masks)
    assert d["n_chips"] == len(masks) and d["labelled"]
    assert d["mean_cloud_fraction"] == pytest.approx(np.mean([m.astype(bool).mean() for m in masks.values()]))


def _bench(w, out):
    yield ["--model", w.run, "--data", w.data, "--out", out / "bench", "--no-reference", "--no-peer",
           "--n-latency", 1, "--limit", 2, "--threads", 1]
    (row,) = json.loads((out / "bench" / "bench.json").read_text())
    assert row["kind"] == "student" and row["n_chips"] == 2 and row["params"] == _trained(w.run, "unet-s")["params"]
    ids = w.test.chip_ids()[:2]
    want = _student_masks(w.run, w.test)
    labels = _labels(w.test)
    assert row["jaccard"] == pytest.approx(_global_jaccard({c: want[c] for c in ids}, {c: labels[c] for c in ids}))


def _pack(w, out):
    yield ["--checkpoint", w.run, "--out", out / "s.zip", "--chip-size", 96]
    import io
    import zipfile

    with zipfile.ZipFile(out / "s.zip") as z:
        assert "main.py" in z.namelist()
        state = torch.load(io.BytesIO(z.read("assets/model.pt")))
        assert json.loads(z.read("assets/config.json"))["model"]["name"] == "unet-s"
    mine = torch.load(w.run / "student.pt")
    assert sorted(state) == sorted(mine) and all(torch.equal(state[k], mine[k]) for k in mine)


def _runtime_test(w, out):
    yield ["--zip", w.zip, "--data", w.test.features_dir, "--labels", w.test.labels_dir, "--json", out / "v.json",
           "--keep", out / "root", "--quiet"]
    v = json.loads((out / "v.json").read_text())
    written = _masks(out / "root" / "predictions")
    assert v["ok"] and v["n_chips"] == len(written) == len(w.test.chip_ids())
    assert v["jaccard"] == pytest.approx(_global_jaccard(written, _labels(w.test)), abs=1e-12)


#: per old spelling: a generator that yields the arguments, is sent the command's output, and checks its work
WORK = {"synth": _synth, "preview": _preview, "validate": _validate, "folds": _folds, "train": _train,
        "distill": _distill, "predict": _predict, "score": _score, "real-bench": _real_bench, "audit": _audit,
        "export": _export, "predict-scene": _predict_scene, "downlink": _downlink, "bench": _bench, "pack": _pack,
        "runtime-test": _runtime_test}


def test_every_old_spelling_is_exercised():
    assert sorted(WORK) == sorted(ALIASES)


@pytest.mark.parametrize("alias", sorted(WORK))
def test_an_old_spelling_does_the_stage_commands_work(alias, world, tmp_path, capsys):
    """``cloudkd ALIAS ...`` on real small input, as a user types it: exit 0 and the command's own result, checked
    against a computation made here (masks from the run's weights, Jaccard from the files, ...)."""
    steps = WORK[alias](world, tmp_path)
    args = next(steps)
    code, text = invoke([alias, *args], capsys)
    assert code == 0, text
    with pytest.raises(StopIteration):
        steps.send(text)
