"""Whole Sentinel-2 products: miniature .SAFE folders (lossless JPEG 2000 bands, MTD_MSIL2A/1C.xml, manifest.safe)
built here, read with the product's radiometric offset, and masks written as georeferenced COGs with a chip
report. No download: every product is generated."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from cloudkd.common.errors import DataError
from cloudkd.data.normalise import BANDS, dn_to_reflectance, normalise
from cloudkd.data.products import ProductWarning, open_scene, read_product_metadata
from cloudkd.onboard.scene import predict_scene
from synthproduct import DEFAULT_CRS, DEFAULT_TRANSFORM, write_safe

from conftest import invoke

GEO = dict(crs=DEFAULT_CRS, transform=Affine(*DEFAULT_TRANSFORM))
#: a pixelwise "model" on the normalised bands: bands weigh differently (a swapped band changes the mask) and a
#: reflectance 0.1 too bright turns clear pixels cloudy
COEF = np.array([0.6, -0.2, 0.5, 0.3], np.float32)


def _dn(h, w, seed=0):
    """(4, H, W) uint16 reflectance x 10000 like the On Cloud N chips: smooth ground, bright cloud blobs, noise,
    a no-data corner (0 in every band)."""
    rng = np.random.default_rng(seed)
    ground = np.kron(rng.uniform(0.02, 0.3, (4, h // 16 + 1, w // 16 + 1)), np.ones((1, 16, 16)))[:, :h, :w]
    cloud = np.kron(rng.random((h // 32 + 1, w // 32 + 1)) > 0.6, np.ones((32, 32)))[:h, :w]
    refl = ground + 0.45 * cloud[None] + rng.normal(0, 0.01, (4, h, w))
    dn = np.clip(refl * 10000, 1, 20000).astype(np.uint16)
    dn[:, :40, -60:] = 0
    return dn


def _bias(dn):
    """The logit offset that makes about half of the valid pixels cloud."""
    z = (normalise(dn_to_reflectance(dn)) * COEF[:, None, None]).sum(axis=0)
    return -float(np.median(z[~(dn == 0).all(axis=0)]))


def _pixelwise(bias):
    return lambda x: (x * COEF[None, :, None, None]).sum(axis=1, keepdims=True) + bias


def _plain(folder, dn, driver="GTiff", **opts):
    """The same reflectances as plain band files on the product's grid (DN = reflectance x 10000, no offset)."""
    folder.mkdir(parents=True)
    ext = {"GTiff": "tif", "COG": "tif", "JP2OpenJPEG": "jp2"}[driver]
    for band, data in zip(BANDS, dn):
        with rasterio.open(folder / f"{band}.{ext}", "w", driver=driver, height=data.shape[0], width=data.shape[1],
                           count=1, dtype="uint16", **GEO, **opts) as ds:
            ds.write(data, 1)
    return folder


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def _mask(scene, tmp_path, bias, name, **kw):
    out = tmp_path / f"{name}.tif"
    predict_scene(scene, out, _pixelwise(bias), tile=256, overlap=32, batch_size=4, progress=False, **kw)
    return _read(out)


@pytest.fixture(scope="module")
def brightness_onnx(tmp_path_factory):
    """The pixelwise model as an ONNX file (a 1x1 convolution), for the command line; its bias is set per scene by
    shifting the threshold instead, so one file serves every test."""
    from cloudkd.onboard.export import export_onnx

    conv = torch.nn.Conv2d(4, 1, 1)
    with torch.no_grad():
        conv.weight[:] = torch.from_numpy(COEF).view(1, 4, 1, 1)
        conv.bias.zero_()
    return export_onnx(conv, tmp_path_factory.mktemp("model") / "brightness.onnx", dynamic=True, size=64)


def _threshold(bias):
    """The probability threshold at which the bias-free model's mask equals that of logit + bias > 0."""
    return float(1 / (1 + np.exp(bias)))


# ------------------------------------------------------------------------------------------------ radiometry
@pytest.mark.parametrize("baseline, offset", [("04.00", None), ("02.14", None),
                                              ("05.10", (-1000, -900, -800, -700))],
                         ids=["baseline-04.00", "baseline-02.14", "per-band-offsets"])
def test_l2a_product_gives_the_mask_of_the_same_reflectances_as_plain_bands(tmp_path, baseline, offset):
    dn = _dn(300, 340)
    bias = _bias(dn)
    safe = write_safe(tmp_path, dn, baseline=baseline, offset=offset)
    if baseline >= "04":  # the product's digital numbers really carry the offset
        b02 = _read(next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2")))
        assert b02[100, 100] == dn[0, 100, 100] + 1000 and b02[0, -1] == 0
    sc = open_scene(safe)
    want_offsets = offset or ((-1000.0,) * 4 if baseline >= "04" else (0.0,) * 4)
    assert sc.radiometry.offsets == tuple(map(float, want_offsets)) and sc.radiometry.scale == 10000
    assert sc.radiometry.level == "L2A" and sc.radiometry.baseline == baseline and sc.crs == DEFAULT_CRS
    sc.close()

    plain = _mask(_plain(tmp_path / "plain", dn), tmp_path, bias, "plain")
    got = _mask(safe, tmp_path, bias, "safe")
    assert 0.2 < plain.mean() < 0.8 and plain[:40, -60:].max() == 0
    assert np.array_equal(got, plain)
    if baseline >= "04":  # read as DN / 10000, the same product comes out brighter: more cloud
        with pytest.warns(ProductWarning, match="override"):
            naive = _mask(safe, tmp_path, bias, "naive", offset=0)
        assert naive.mean() > plain.mean() + 0.05


def test_every_input_kind_gives_the_same_mask(tmp_path):
    """A product's own band folder (metadata found at the product's root), COG and JPEG 2000 band folders, and a
    multi-band file whose bands say which they are."""
    dn = _dn(260, 300, seed=1)
    bias = _bias(dn)
    plain = _mask(_plain(tmp_path / "plain", dn), tmp_path, bias, "plain")
    safe = write_safe(tmp_path, dn)
    r10m = next(safe.glob("GRANULE/*/IMG_DATA/R10m"))
    sc = open_scene(r10m)
    assert sc.radiometry.offsets == (-1000.0,) * 4 and sc.kind == "Sentinel-2 L2A band files"
    sc.close()
    assert np.array_equal(_mask(r10m, tmp_path, bias, "r10m"), plain)
    cog = _plain(tmp_path / "cog", dn, driver="COG", COMPRESS="DEFLATE")
    assert np.array_equal(_mask(cog, tmp_path, bias, "cog"), plain)
    # plain JPEG 2000 bands outside a product: their offset is unknown until given (here: none)
    jp2 = _plain(tmp_path / "jp2", dn, driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES")
    with pytest.raises(DataError, match="--offset and --scale"):
        open_scene(jp2)
    assert np.array_equal(_mask(jp2, tmp_path, bias, "jp2", offset=0, scale=10000), plain)
    order = [3, 2, 1, 0]  # B08, B04, B03, B02
    with rasterio.open(tmp_path / "stack.tif", "w", driver="GTiff", height=260, width=300, count=4, dtype="uint16",
                       **GEO) as ds:
        ds.write(dn[order])
        for i, b in enumerate(order):
            ds.set_band_description(i + 1, BANDS[b])
    assert np.array_equal(_mask(tmp_path / "stack.tif", tmp_path, bias, "stack"), plain)


def test_l1c_product_is_read_with_its_offset_and_warned(tmp_path, brightness_onnx, capsys):
    dn = _dn(200, 220, seed=2)
    bias = _bias(dn)
    safe = write_safe(tmp_path, dn, level="L1C")
    assert next(safe.glob("GRANULE/*/IMG_DATA/*_B08.jp2")).is_file() and (safe / "MTD_MSIL1C.xml").is_file()
    with pytest.warns(ProductWarning, match="L1C product .* trained on L2A surface reflectance"):
        sc = open_scene(safe)
    assert sc.radiometry.level == "L1C" and sc.radiometry.offsets == (-1000.0,) * 4
    sc.close()
    plain = _mask(_plain(tmp_path / "plain", dn), tmp_path, bias, "plain")
    code, out = invoke(["onboard", "predict-scene", safe, "--model", brightness_onnx, "--out", tmp_path / "l1c.tif",
                        "--tile", 128, "--overlap", 16, "--threshold", _threshold(bias)], capsys)
    assert code == 0, out
    assert "warning:" in out and "L1C product" in out and "L2A surface reflectance" in out, out
    assert "Sentinel-2 L1C product" in out and "(DN - 1000) / 10000" in out
    got = _read(tmp_path / "l1c.tif")
    settled = np.abs(_pixelwise(bias)(normalise(dn_to_reflectance(dn))[None])[0, 0]) > 1e-4
    assert np.array_equal(got[settled], plain[settled]) and settled.mean() > 0.99


def test_metadata_is_read_from_the_products_xml(tmp_path):
    safe = write_safe(tmp_path, _dn(64, 64), offset=(-1000, -1001, -1002, -1003), quantification=10000)
    r = read_product_metadata(safe / "MTD_MSIL2A.xml")
    assert (r.scale, r.offsets, r.nodata, r.level, r.baseline) == (10000, (-1000, -1001, -1002, -1003), 0, "L2A",
                                                                   "04.00")
    text = (safe / "MTD_MSIL2A.xml").read_text()
    assert '<BOA_ADD_OFFSET band_id="7">-1003</BOA_ADD_OFFSET>' in text  # B08 is band_id 7
    assert "<BOA_QUANTIFICATION_VALUE" in text and "<PROCESSING_BASELINE>04.00<" in text
    (safe / "MTD_MSIL2A.xml").write_text(text.replace("<SPECIAL_VALUE_INDEX>0<", "<SPECIAL_VALUE_INDEX>7<"))
    assert read_product_metadata(safe / "MTD_MSIL2A.xml").nodata == 7


# ----------------------------------------------------------------------------------------- the command line
def test_command_writes_a_georeferenced_cog_probability_and_chip_report(tmp_path, brightness_onnx, capsys):
    h, w = 1100, 1300  # 3 x 3 chips of 512, the edge ones smaller; overviews below 512
    dn = _dn(h, w, seed=3)
    bias = _bias(dn)
    safe = write_safe(tmp_path, dn)
    out, prob, report = tmp_path / "o" / "mask.tif", tmp_path / "o" / "prob.tif", tmp_path / "o" / "chips.csv"
    code, text = invoke(["onboard", "predict-scene", safe, "--model", brightness_onnx, "--out", out, "--prob-out", prob,
                         "--chip-report", report, "--threshold", _threshold(bias)], capsys)
    assert code == 0, text
    assert f"{h}x{w} scene" in text and "georeferenced COG" in text and "km²/s" in text, text
    assert "Sentinel-2 L2A product" in text and "reflectance = (DN - 1000) / 10000" in text, text
    # no temporaries; the output policy's manifest lists the three files as cloudkd's (so --force may replace them)
    assert sorted(p.name for p in out.parent.iterdir()) == [".cloudkd-files.json", "chips.csv", "mask.tif", "prob.tif"]
    # existing outputs are kept unless --force
    before = {p: p.read_bytes() for p in (out, prob, report)}
    again = ["onboard", "predict-scene", safe, "--model", brightness_onnx, "--out", out, "--prob-out", prob,
             "--chip-report", report, "--threshold", _threshold(bias)]
    code, text2 = invoke(again, capsys)
    assert code == 2 and "--force" in text2 and all(p.read_bytes() == b for p, b in before.items()), text2
    assert invoke(again + ["--force"], capsys)[0] == 0

    with rasterio.open(out) as m, rasterio.open(next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2"))) as b:
        assert m.crs == b.crs == DEFAULT_CRS and m.transform == b.transform == GEO["transform"]
        assert (m.height, m.width, m.count, m.dtypes[0]) == (h, w, 1, "uint8")
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and m.compression.name.lower() == "deflate"
        assert m.block_shapes == [(512, 512)] and m.overviews(1) == [2, 4]
        assert m.tags()["CLOUDKD_MODEL"] == str(brightness_onnx)
        mask = m.read(1)
    z = _pixelwise(bias)(normalise(dn_to_reflectance(dn))[None])[0, 0]  # the model is pixelwise: no seams
    want = (z > 0).astype(np.uint8)
    want[(dn == 0).all(axis=0)] = 0
    settled = np.abs(z) > 1e-4
    assert np.array_equal(mask[settled], want[settled]) and 0.2 < mask.mean() < 0.8

    with rasterio.open(prob) as p:
        assert p.crs == DEFAULT_CRS and p.transform == GEO["transform"] and p.overviews(1) == [2, 4]
        q = p.read(1)
    assert q[:40, -60:].max() == 0  # no data
    valid = ~(dn == 0).all(axis=0)
    p_model = 1 / (1 + np.exp(-(z - bias)))  # the ONNX model's own probability (its threshold carries the bias)
    assert np.abs(q.astype(np.float64) - 255 * p_model)[valid].max() <= 0.5 + 1e-3

    rows = list(csv.DictReader(report.open()))
    assert [r["chip_id"] for r in rows] == [f"r{y}_c{x}" for y in (0, 512, 1024) for x in (0, 512, 1024)]
    for r in rows:
        y, x, ch, cw = int(r["y"]), int(r["x"]), int(r["height"]), int(r["width"])
        assert (ch, cw) == (min(512, h - y), min(512, w - x))
        assert float(r["cloud_fraction"]) == pytest.approx(mask[y:y + 512, x:x + 512].mean(), abs=1e-12)
        nd = (dn[:, y:y + 512, x:x + 512] == 0).all(axis=0)
        assert float(r["nodata_fraction"]) == pytest.approx(nd.mean(), abs=1e-12)
        left, top = GEO["transform"] @ (x, y)
        assert (float(r["left"]), float(r["top"])) == (left, top)
        assert float(r["right"]) == left + 10 * cw and float(r["bottom"]) == top - 10 * ch
    assert any(float(r["nodata_fraction"]) > 0 for r in rows) and len({r["cloud_fraction"] for r in rows}) > 3


def test_product_without_metadata_needs_an_explicit_offset(tmp_path, brightness_onnx, capsys):
    dn = _dn(200, 200, seed=4)
    bias = _bias(dn)
    safe = write_safe(tmp_path, dn)
    (safe / "MTD_MSIL2A.xml").unlink()
    (safe / "manifest.safe").write_text((safe / "manifest.safe").read_text().replace("./MTD_MSIL2A.xml", "./x"))
    args = ["onboard", "predict-scene", safe, "--model", brightness_onnx, "--out", tmp_path / "o" / "m.tif",
            "--tile", 128, "--threshold", _threshold(bias)]
    code, out = invoke(args, capsys)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--offset and --scale" in lines[0] and safe.name in lines[0], out
    assert "acquired 2022-06-01" in lines[0] and "--offset -1000" in lines[0]
    assert not (tmp_path / "o").exists()
    code, out = invoke(args + ["--offset", -1000], capsys)
    assert code == 0, out
    plain = _mask(_plain(tmp_path / "plain", dn), tmp_path, bias, "plain")
    settled = np.abs(_pixelwise(bias)(normalise(dn_to_reflectance(dn))[None])[0, 0]) > 1e-4
    assert np.array_equal(_read(tmp_path / "o" / "m.tif")[settled], plain[settled])


def _missing_band(safe):
    f = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B08_10m.jp2"))
    f.unlink()
    return f.name


def _garbled_metadata(safe):
    (safe / "MTD_MSIL2A.xml").write_text((safe / "MTD_MSIL2A.xml").read_text()[:900])
    return "MTD_MSIL2A.xml"


def _offsets_missing(safe):
    text = (safe / "MTD_MSIL2A.xml").read_text()
    start, end = text.index("<BOA_ADD_OFFSET_VALUES_LIST>"), text.index("</BOA_ADD_OFFSET_VALUES_LIST>")
    (safe / "MTD_MSIL2A.xml").write_text(text[:start] + text[end + len("</BOA_ADD_OFFSET_VALUES_LIST>"):])
    return "MTD_MSIL2A.xml"


def _other_grid(safe):
    f = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2"))
    with rasterio.open(f, "w", driver="JP2OpenJPEG", height=50, width=60, count=1, dtype="uint16", crs=DEFAULT_CRS,
                       transform=Affine(20.0, 0, DEFAULT_TRANSFORM[2], 0, -20.0, DEFAULT_TRANSFORM[5]), QUALITY=100,
                       REVERSIBLE="YES") as ds:
        ds.write(np.ones((50, 60), np.uint16), 1)
    return f.name


def _shifted_grid(safe):
    f = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B03_10m.jp2"))
    data = _read(f)
    t = Affine(*DEFAULT_TRANSFORM)
    with rasterio.open(f, "w", driver="JP2OpenJPEG", height=data.shape[0], width=data.shape[1], count=1,
                       dtype="uint16", crs=DEFAULT_CRS, transform=Affine(t.a, 0, t.c + 100, 0, t.e, t.f), QUALITY=100,
                       REVERSIBLE="YES") as ds:
        ds.write(data, 1)
    return f.name


def _truncated_band(safe):
    """Readable header, broken image data: found only while the scene is being predicted."""
    f = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B03_10m.jp2"))
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return f.name


def _unreadable_manifest(safe):
    (safe / "manifest.safe").write_text("<xfdu:XFDU")
    return "manifest.safe"


BAD = {"missing-band": (_missing_band, "missing"), "garbled-metadata": (_garbled_metadata, "unreadable"),
       "no-offsets": (_offsets_missing, "no BOA_ADD_OFFSET"), "other-grid": (_other_grid, "grid"),
       "shifted-grid": (_shifted_grid, "grid"), "truncated-band": (_truncated_band, "cannot be read"),
       "unreadable-manifest": (_unreadable_manifest, "unreadable")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_product_is_one_line_naming_the_file_exit_2_nothing_written(tmp_path, brightness_onnx, capsys, case):
    spoil, says = BAD[case]
    safe = write_safe(tmp_path, _dn(600, 560, seed=5))
    name = spoil(safe)
    outs = tmp_path / "o"
    outs.mkdir()
    code, out = invoke(["onboard", "predict-scene", safe, "--model", brightness_onnx, "--out", outs / "m.tif",
                        "--prob-out", outs / "p.tif", "--chip-report", outs / "c.csv", "--tile", 128], capsys)
    # besides the error: what the scene is (printed once it opened) and the progress bar of a run that failed
    # half-way (its captured redraws)
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith((str(safe), "scene tiles"))]
    assert code == 2, out
    assert "Traceback" not in out and len(lines) == 1 and lines[0].startswith("error: "), out
    assert name in lines[0] and says in lines[0], out
    assert list(outs.iterdir()) == [], f"{case} left {list(outs.iterdir())}"


def test_band_folder_without_a_band_names_it(tmp_path, brightness_onnx, capsys):
    d = _plain(tmp_path / "bands", _dn(64, 64))
    (d / "B04.tif").unlink()
    code, out = invoke(["predict-scene", d, "--model", brightness_onnx, "--out", tmp_path / "m.tif"], capsys)
    assert code == 2 and out.count("\n") == 1 and str(d) in out and "no B04 band file" in out, out
    assert not (tmp_path / "m.tif").exists()


# ---------------------------------------------------------------------------------------------- bounded memory
PEAK = """
import sys
from cloudkd.onboard.scene import predict_scene
predict_scene(sys.argv[1], sys.argv[2], lambda x: x[:, :1] - x[:, 3:4], tile=512, overlap=64, progress=False,
              chip_report=sys.argv[2] + ".csv", prob_out=sys.argv[2] + ".prob.tif")
print([int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0] / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak resident memory from /proc")
def test_peak_resident_memory_does_not_grow_with_the_products_height(tmp_path):
    """The whole process, GDAL's block cache and the COGs' overviews included (what tracemalloc cannot see): an
    8000-row scene peaks within a few MiB of a 2000-row one of the same width, far below the 137 MiB more of
    uint16 that a version holding the scene would need. (Peak of a fresh process: VmHWM, which, unlike
    ru_maxrss, does not inherit this process's size.) The bands are tiled GeoTIFFs written window by window."""
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    strip = rng.integers(1, 5000, size=(4, 256, 3000)).astype(np.uint16)
    peaks = {}
    for h in (2000, 8000):
        d = tmp_path / f"s{h}"
        d.mkdir()
        for band, data in zip(BANDS, strip):
            with rasterio.open(d / f"{band}.tif", "w", driver="GTiff", height=h, width=3000, count=1, dtype="uint16",
                               tiled=True, blockxsize=512, blockysize=512, compress="deflate", **GEO) as ds:
                for y in range(0, h, 256):
                    ds.write(data[None, :min(256, h - y)], window=Window(0, y, 3000, min(256, h - y)))
        # a fixed mmap threshold: glibc's sliding one keeps freed big arrays on the heap, up to ~15 MiB of noise
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
        r = subprocess.run([sys.executable, "-c", PEAK, str(d), str(tmp_path / f"m{h}.tif")], capture_output=True,
                           text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        peaks[h] = float(r.stdout.split()[-1])
        with rasterio.open(tmp_path / f"m{h}.tif") as m:
            assert m.shape == (h, 3000) and m.overviews(1)
    naive = 6000 * 3000 * 4 * 2 / 2 ** 20  # the extra uint16 rows of the taller scene: 137 MiB
    assert peaks[8000] - peaks[2000] < naive / 10, peaks  # measured: 0.1 MiB
