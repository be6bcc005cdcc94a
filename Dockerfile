# A challenge-style image for local submission runs: the On Cloud N runtime's packages on Python 3.9
# (see ../shared/runtime/CONTRACT.md), the /codeexecution layout, and an entrypoint that unzips the submission,
# runs main.py with no arguments, validates the predictions like the runtime's tests and tars them.
#
#   cloudkd pack --checkpoint runs/demo/student --out submission/submission.zip
#   docker build -t cloudkd-runtime .
#   docker run --rm --network none \
#       -v "$PWD/data/generated/demo/test_features:/codeexecution/data/test_features:ro" \
#       -v "$PWD/submission/submission.zip:/codeexecution/submission/submission.zip:ro" \
#       cloudkd-runtime
#
# The entrypoint script and the validator are the same files the test suite runs outside Docker
# (Docker itself does not run on the project's CI machines).
FROM python:3.9.7-slim

# the runtime's packages, what main.py (and a user's own main.py) may import: the one pin list that
# `make runtime-env` (scripts/runtime_env.sh) installs too, complete, so --no-deps pulls nothing newer
COPY submission/runtime-requirements.txt /opt/cloudkd/runtime-requirements.txt
RUN pip install --no-cache-dir --no-deps --only-binary=:all: -r /opt/cloudkd/runtime-requirements.txt

RUN useradd --create-home --uid 1000 appuser \
    && mkdir -p /codeexecution/data /codeexecution/submission /codeexecution/predictions /opt/cloudkd \
    && chown -R appuser /codeexecution
COPY src/cloudkd/submission/validate.py /opt/cloudkd/validate.py
COPY submission/entrypoint.sh /opt/cloudkd/entrypoint.sh

USER appuser
WORKDIR /codeexecution
ENTRYPOINT ["/bin/sh", "/opt/cloudkd/entrypoint.sh"]
