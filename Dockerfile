# A challenge-style image for local submission runs: the On Cloud N runtime's key packages on Python 3.9
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

# the runtime's versions of what main.py (and a user's own main.py) may import; CPU build of torch 1.8.0
RUN pip install --no-cache-dir \
        torch==1.8.0 torchvision==0.9.1 numpy==1.20.3 pandas==1.2.5 tifffile==2021.8.8 pillow==8.2.0 \
        segmentation-models-pytorch==0.2.1 pytorch-lightning==1.4.1 albumentations==1.0.3 \
        typer==0.3.2 loguru==0.5.3

RUN useradd --create-home --uid 1000 appuser \
    && mkdir -p /codeexecution/data /codeexecution/submission /codeexecution/predictions /opt/cloudkd \
    && chown -R appuser /codeexecution
COPY src/cloudkd/submission/validate.py /opt/cloudkd/validate.py
COPY submission/entrypoint.sh /opt/cloudkd/entrypoint.sh

USER appuser
WORKDIR /codeexecution
ENTRYPOINT ["/bin/sh", "/opt/cloudkd/entrypoint.sh"]
