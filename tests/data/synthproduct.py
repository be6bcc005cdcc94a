"""Miniature Sentinel-2 products for tests and benchmarks: a ``.SAFE`` folder as ESA lays it out, holding only
the four bands the models read, as lossless JPEG 2000 (GDAL's JP2OpenJPEG driver, ``QUALITY=100``,
``REVERSIBLE=YES``), with its ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml`` and ``manifest.safe``.

The metadata follow the real products' structure (PSD 14: the element names, namespaces and nesting of
``Product_Image_Characteristics``; ``band_id`` 0..12 for B1..B12 with B8A at 8). From processing baseline 04.00 on,
the digital numbers carry the radiometric offset: ``DN = reflectance x 10000 + 1000`` for every valid pixel, while
no-data pixels stay 0 (the NODATA special value).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from cloudkd.common.infer import nodata_mask
from cloudkd.data.normalise import BANDS

#: Sentinel-2's 13 bands in band_id order
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: a UTM 32N grid at 10 m (the tile T32TQM's corner)
DEFAULT_TRANSFORM = (10.0, 0.0, 699960.0, 0.0, -10.0, 5000040.0)
DEFAULT_CRS = "EPSG:32632"


def _mtd(level: str, baseline: str, offsets: Optional[Sequence[float]], product: str, granule: str,
         stem: str, quantification: int) -> str:
    spectral = "\n".join(f'        <Spectral_Information bandId="{i}" physicalBand="{b}">\n'
                         f'          <RESOLUTION>{10 if b in ("B2", "B3", "B4", "B8") else 20}</RESOLUTION>\n'
                         f'        </Spectral_Information>' for i, b in enumerate(S2_BANDS))
    if level == "L2A":
        ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
        root, ptype, plevel = "Level-2A_User_Product", "S2MSI2A", "Level-2A"
        quant = (f'      <QUANTIFICATION_VALUES_LIST>\n'
                 f'        <BOA_QUANTIFICATION_VALUE unit="none">{quantification}</BOA_QUANTIFICATION_VALUE>\n'
                 f'        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
                 f'        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
                 f'      </QUANTIFICATION_VALUES_LIST>\n')
        olist, otag = "BOA_ADD_OFFSET_VALUES_LIST", "BOA_ADD_OFFSET"
        files = "\n".join(f"            <IMAGE_FILE>GRANULE/{granule}/IMG_DATA/R10m/{stem}_{b}_10m</IMAGE_FILE>"
                          for b in BANDS)
    else:
        ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
        root, ptype, plevel = "Level-1C_User_Product", "S2MSI1C", "Level-1C"
        quant = f'      <QUANTIFICATION_VALUE unit="none">{quantification}</QUANTIFICATION_VALUE>\n'
        olist, otag = "Radiometric_Offset_List", "RADIO_ADD_OFFSET"
        files = "\n".join(f"            <IMAGE_FILE>GRANULE/{granule}/IMG_DATA/{stem}_{b}</IMAGE_FILE>" for b in BANDS)
    offs = ""
    if offsets is not None:
        offs = (f"      <{olist}>\n" + "".join(f'        <{otag} band_id="{i}">{o:g}</{otag}>\n'
                                             for i, o in enumerate(offsets)) + f"      </{olist}>\n")
    return f'''<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{ns}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2022-06-01T10:25:59.024Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>2022-06-01T10:25:59.024Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{product}</PRODUCT_URI>
      <PROCESSING_LEVEL>{plevel}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>{ptype}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>2022-06-01T12:00:00.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2B_20220601T102559_027335_N{baseline.replace('.', '')}">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <SENSING_ORBIT_NUMBER>108</SENSING_ORBIT_NUMBER>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="{granule}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Image_Display_Order>
        <RED_CHANNEL>3</RED_CHANNEL>
        <GREEN_CHANNEL>2</GREEN_CHANNEL>
        <BLUE_CHANNEL>1</BLUE_CHANNEL>
      </Image_Display_Order>
{quant}{offs}      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
'''


def _manifest(level: str, files: Sequence[str], mtd: str) -> str:
    objs = [(f"S2_Level-{level[1:]}_Product_Metadata", mtd, "text/xml")]
    for f in files:
        band = f.rsplit("_", 2)[-2] if level == "L2A" else f.rsplit("_", 1)[-1].split(".")[0]
        res = "10m_" if level == "L2A" else ""
        objs.append((f"IMG_DATA_Band_{band}_{res}Tile1_Data", f, "application/octet-stream"))
    body = "\n".join(f'''    <dataObject ID="{i}">
      <byteStream mimeType="{m}" size="0">
        <fileLocation locatorType="URL" href="./{h}"/>
      </byteStream>
    </dataObject>''' for i, h, m in objs)
    kind = "l2a" if level == "L2A" else "l1c"
    return f'''<?xml version="1.0" encoding="UTF-8"?>
<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" xmlns:gml="http://www.opengis.net/gml" xmlns:safe="http://www.esa.int/safe/sentinel/1.1" version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_{kind}_user_product">
  <informationPackageMap>
    <xfdu:contentUnit unitType="Product_Level-{level[1:]}" textInfo="SENTINEL-2 MSI Level-{level[1:]} User Product" dmdID="acquisitionPeriod platform" pdiID="processing">
    </xfdu:contentUnit>
  </informationPackageMap>
  <dataObjectSection>
{body}
  </dataObjectSection>
</xfdu:XFDU>
'''


def write_safe(parent: Union[os.PathLike, str], dn: np.ndarray, level: str = "L2A", baseline: str = "04.00",
               offset: Optional[Union[float, Sequence[float]]] = None, transform: Sequence[float] = DEFAULT_TRANSFORM,
               crs: str = DEFAULT_CRS, mtd: bool = True, manifest: bool = True, quantification: int = 10000) -> Path:
    """Write a miniature ``.SAFE`` product under ``parent`` and return its folder.

    ``dn``: (4, H, W) B02, B03, B04, B08 as reflectance x 10000 (the On Cloud N chips' digital numbers; 0 in every
    band = no data). ``offset``: the product's radiometric offset, one number or one per band B02, B03, B04, B08
    (default -1000 from baseline 04.00 on, else none); it is subtracted from the digital numbers of valid pixels,
    as the ground segment adds ``-offset`` to them. ``mtd`` / ``manifest``: write those files.
    """
    import rasterio
    from affine import Affine

    dn = np.asarray(dn)
    if dn.ndim != 3 or dn.shape[0] != 4:
        raise ValueError(f"dn must be (4, H, W), got {dn.shape}")
    if level not in ("L2A", "L1C"):
        raise ValueError(f"level must be L2A or L1C, got {level!r}")
    if offset is None:
        offset = -1000.0 if float(baseline) >= 4.0 else None
    per_band = None if offset is None else np.broadcast_to(np.asarray(offset, np.float64), (4,))
    valid = ~nodata_mask(dn)
    out = dn.astype(np.int64)
    if per_band is not None:
        out = np.where(valid, out - per_band.reshape(4, 1, 1).astype(np.int64), 0)
    if out.min() < 0 or out.max() > 65535:
        raise ValueError("the digital numbers with the offset leave uint16")
    out = out.astype(np.uint16)

    stem, date = "T32TQM_20220601T102559", "20220601T102559"
    n = baseline.replace(".", "")
    product = f"S2B_MSI{level}_{date}_N{n}_R108_T32TQM_20220601T120000.SAFE"
    granule = f"{level}_T32TQM_A027335_{date}"
    safe = Path(parent) / product
    img = safe / "GRANULE" / granule / "IMG_DATA"
    img = img / "R10m" if level == "L2A" else img
    img.mkdir(parents=True)
    rel = []
    tr = Affine(*transform)
    for band, data in zip(BANDS, out):
        name = f"{stem}_{band}_10m.jp2" if level == "L2A" else f"{stem}_{band}.jp2"
        with rasterio.open(img / name, "w", driver="JP2OpenJPEG", height=data.shape[0], width=data.shape[1],
                           count=1, dtype="uint16", crs=crs, transform=tr, QUALITY=100, REVERSIBLE="YES") as ds:
            ds.write(data, 1)
        rel.append(str((img / name).relative_to(safe)))
    mtd_name = f"MTD_MSI{level}.xml"
    if mtd:
        offs = None
        if per_band is not None:
            offs = [-1000.0] * len(S2_BANDS)
            for band, o in zip(BANDS, per_band):
                offs[S2_BANDS.index(f"B{int(band[1:])}")] = float(o)
        (safe / mtd_name).write_text(_mtd(level, baseline, offs, product, granule, stem, quantification))
    if manifest:
        (safe / "manifest.safe").write_text(_manifest(level, rel, mtd_name))
    return safe
