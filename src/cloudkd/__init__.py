"""cloudkd: cloud detection for Sentinel-2 / Landsat-8, an nnU-Net v2 teacher distilled into a compact U-Net."""

__version__ = "0.1.0"
