"""Validate a predictions folder the way the On Cloud N runtime does (``tests/test_submission.py``).

For every chip folder of ``test_features`` (names starting with '.' ignored) there must be exactly one
``predictions/{chip_id}.tif``; no other file may exist in ``predictions``; each file must open with PIL, be a
single band of the expected shape (512x512 in the challenge), hold only 0 and 1, and be at most 524,288 bytes.

Needs only numpy and pillow and parses as Python 3.9: the challenge-style Docker image runs this file directly
(``python validate.py --root /codeexecution``); ``cloudkd runtime-test`` imports it.
"""

import argparse
import json
import os
import sys

import numpy as np

MAX_BYTES = 524288


def expected_chips(features_dir):
    return sorted(n for n in os.listdir(features_dir)
                  if not n.startswith(".") and os.path.isdir(os.path.join(features_dir, n)))


def validate(features_dir, predictions_dir, shape=(512, 512)):
    """A verdict dict: ok, n_chips, missing, extra, invalid ({file: reason})."""
    from PIL import Image

    chips = expected_chips(features_dir)
    present = sorted(os.listdir(predictions_dir)) if os.path.isdir(predictions_dir) else []
    wanted = set(c + ".tif" for c in chips)
    missing = sorted(c for c in chips if c + ".tif" not in present)
    extra = sorted(f for f in present if f not in wanted)
    invalid = {}
    for name in sorted(wanted & set(present)):
        path = os.path.join(predictions_dir, name)
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            invalid[name] = "file too large: %d bytes > %d" % (size, MAX_BYTES)
            continue
        try:
            with Image.open(path) as im:
                arr = np.array(im)
        except Exception as exc:
            invalid[name] = "not readable by PIL: %s" % exc
            continue
        if arr.shape != tuple(shape):
            invalid[name] = "wrong shape %s, expected %s" % (arr.shape, tuple(shape))
            continue
        values = np.unique(arr)
        if not set(values.tolist()) <= {0, 1}:
            invalid[name] = "values outside {0, 1}: %s" % values[:10].tolist()
    ok = bool(chips) and not missing and not extra and not invalid
    return {"ok": ok, "n_chips": len(chips), "missing": missing, "extra": extra, "invalid": invalid}


def reasons(verdict):
    """Human-readable failure reasons of a verdict (empty when ok)."""
    out = []
    if verdict["n_chips"] == 0:
        out.append("no chip folders in test_features")
    if verdict["missing"]:
        out.append("%d missing prediction(s): %s" % (len(verdict["missing"]), ", ".join(verdict["missing"][:10])))
    if verdict["extra"]:
        out.append("%d extra file(s): %s" % (len(verdict["extra"]), ", ".join(verdict["extra"][:10])))
    for name, why in list(verdict["invalid"].items())[:10]:
        out.append("%s: %s" % (name, why))
    if len(verdict["invalid"]) > 10:
        out.append("... %d invalid files in all" % len(verdict["invalid"]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("CLOUDKD_ROOT", "/codeexecution"))
    ap.add_argument("--size", type=int, default=512, help="expected mask side (512 in the challenge)")
    ap.add_argument("--json", default=None, help="write the verdict here")
    a = ap.parse_args(argv)
    v = validate(os.path.join(a.root, "data", "test_features"), os.path.join(a.root, "predictions"),
                 (a.size, a.size))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(v, f, indent=2)
    for line in reasons(v):
        print("INVALID: " + line)
    print("validation %s: %d chips" % ("passed" if v["ok"] else "FAILED", v["n_chips"]))
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
