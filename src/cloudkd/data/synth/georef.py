"""Georeferencing tags like the challenge's GeoTIFFs (north-up UTM)."""

from __future__ import annotations

from typing import List


def geotiff_tags(epsg: int, easting: float, northing: float, res: float = 10.0) -> List[tuple]:
    """tifffile ``extratags`` for a north-up UTM GeoTIFF (pixel scale, tie point, geokeys, GDAL nodata 0)."""
    zone = epsg % 100
    hemi = "N" if epsg < 32700 else "S"
    ascii_params = f"WGS 84 / UTM zone {zone}{hemi}|WGS 84|"
    c1 = len(f"WGS 84 / UTM zone {zone}{hemi}|")
    keys = (1, 1, 0, 7,
            1024, 0, 1, 1,  # GTModelType: projected
            1025, 0, 1, 1,  # GTRasterType: PixelIsArea
            1026, 34737, c1, 0,  # GTCitation
            2049, 34737, len(ascii_params) - c1, c1,  # GeogCitation
            2054, 0, 1, 9102,  # angular unit: degree
            3072, 0, 1, epsg,  # projected CRS
            3076, 0, 1, 9001)  # linear unit: metre
    return [
        (33550, "d", 3, (res, res, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, float(easting), float(northing), 0.0), True),
        (34735, "H", len(keys), keys, True),
        (34737, "s", 0, ascii_params, True),
        (42113, "s", 0, "0", True),
    ]
