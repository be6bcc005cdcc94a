"""Data layer: the On Cloud N layout (reading, validation, writing), normalisation, folds, datasets, generator."""

from ..common.errors import DataError
from .chips import (Split, ValidationReport, list_chip_ids, load_index, read_band, read_chip, read_chip_dn,
                    read_label, read_mask, read_metadata, validate_split, write_mask)
from .roots import resolve_split
from .exclude import apply_exclude, read_exclude
from .normalise import BANDS, SCALE, normalise

__all__ = [
    "BANDS", "SCALE", "DataError", "Split", "ValidationReport", "apply_exclude", "list_chip_ids", "load_index",
    "read_band", "read_chip", "read_chip_dn", "read_label", "read_exclude", "read_mask", "read_metadata",
    "resolve_split", "validate_split", "write_mask", "normalise",
]
