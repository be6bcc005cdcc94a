#!/bin/sh
# The challenge-style runtime's entrypoint (Dockerfile), also run by the tests outside Docker.
#   1. unzip submission/submission.zip into the root (/codeexecution);
#   2. fail if there is no main.py or no *.tif under data/test_features;
#   3. python main.py, with no arguments;
#   4. validate the predictions like the runtime's tests/test_submission.py, then tar them.
# Overrides for local runs: CLOUDKD_ROOT (default /codeexecution), CLOUDKD_VALIDATOR (default
# /opt/cloudkd/validate.py), CLOUDKD_CHIP_SIZE (default 512), PYTHON (default python).
set -eu
ROOT="${CLOUDKD_ROOT:-/codeexecution}"
VALIDATOR="${CLOUDKD_VALIDATOR:-/opt/cloudkd/validate.py}"
SIZE="${CLOUDKD_CHIP_SIZE:-512}"
PY="${PYTHON:-python}"
export CLOUDKD_ROOT="$ROOT"

cd "$ROOT"
if [ ! -f submission/submission.zip ]; then echo "entrypoint: no submission/submission.zip in $ROOT"; exit 2; fi
echo "entrypoint: unpacking submission.zip"
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" ./submission/submission.zip ./
if [ ! -f main.py ]; then echo "entrypoint: no main.py at the top level of the zip"; exit 2; fi
if [ -z "$(find data/test_features -name '*.tif' | head -n 1)" ]; then
    echo "entrypoint: no *.tif under data/test_features"; exit 2
fi
echo "entrypoint: running main.py"
"$PY" main.py
echo "entrypoint: validating predictions"
"$PY" "$VALIDATOR" --root "$ROOT" --size "$SIZE"
tar czf submission/predictions.tar.gz -C predictions .
echo "entrypoint: predictions packed in submission/predictions.tar.gz"
