#!/usr/bin/env bash
# Build the On Cloud N runtime's interpreter and libraries without Docker (`make runtime-env`):
# Python 3.9 (Debian bullseye's python3.9 3.9.2) + the packages of submission/runtime-requirements.txt (torch
# 1.8.0, torchvision 0.9.1, pytorch-lightning 1.4.1, segmentation-models-pytorch 0.2.1, albumentations 1.0.3,
# numpy 1.20.3, pandas 1.2.5, tifffile 2021.8.8, rasterio 1.2.6, pillow 8.2.0, typer 0.3.2, loguru 0.5.3 and all
# their dependencies at versions of the runtime's day: the one list the Dockerfile installs too), so
# `cloudkd submission runtime-test --python .runtime-py39/bin/python` runs main.py the way the runtime does.
#
#   scripts/runtime_env.sh [--link PATH] [BOOTSTRAP_PYTHON]
#   scripts/runtime_env.sh --check      exit 0 when the environment is built from the current pin list, 1 when
#                                        `make runtime-env` would (re)build it; builds nothing
#
# Where: $CLOUDKD_RUNTIME_ENV, default ~/.cache/cloudkd/runtime-py39, outside the clone so that a fresh clone (CI)
# reuses it; --link PATH (the Makefile passes .runtime-py39) is made a symlink to it. BOOTSTRAP_PYTHON (default
# python3) only downloads the pip wheel that bootstraps pip in the new environment. The pin list:
# $CLOUDKD_RUNTIME_PINS, default submission/runtime-requirements.txt of this checkout.
# Steps: 1. apt-get update + download of the bullseye .debs with a private APT state (a sources list naming
# bullseye, lists and cache under the build folder; the system's apt state is not touched); 2. dpkg -x into
# ENV/base; 3. a venv (ENV itself) without pip, whose bin/python is a wrapper that sets LD_LIBRARY_PATH to
# base/usr/lib/x86_64-linux-gnu (bullseye's libssl1.1, libffi7, libmpdec3); 4. pip bootstrapped from its wheel;
# 5. pip install --no-deps -r the pin list; 6. pip check: the list is complete (so nothing can pull a newer torch);
# 7. a check that imports the runtime's libraries, runs an smp model and compares the version of every package
# with its pin in the list; 8. the stamp ENV/.cloudkd-runtime-env (its first line the key: the Debian and pip versions and every line of
# the pin list; then the versions as JSON), written last. A present stamp whose key matches the current pin list
# means the environment is reused as it is; otherwise ENV is removed and built again.
# A failed step ends with one line naming the step, the tail of its log and exit 1; a pin list that cannot be
# read, or a line of it that is neither a NAME==VERSION pin nor a pip option, is one line and exit 2.
set -uo pipefail

LINK=""
CHECK_ONLY=""
if [ "${1:-}" = "--check" ]; then CHECK_ONLY=1; shift; fi
if [ "${1:-}" = "--link" ]; then LINK="$2"; shift 2; fi
BOOT_PY="${1:-python3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS_FILE="${CLOUDKD_RUNTIME_PINS:-$REPO/submission/runtime-requirements.txt}"
ENV_DIR="${CLOUDKD_RUNTIME_ENV:-$HOME/.cache/cloudkd/runtime-py39}"
STAMP_NAME=".cloudkd-runtime-env"
MIRROR="${CLOUDKD_DEBIAN_MIRROR:-}"
SUITE=bullseye
DEB_VERSION=3.9.2-1
DEBS=(python3.9 python3.9-minimal libpython3.9-minimal libpython3.9-stdlib libssl1.1 libffi7 libmpdec3
      python3-distutils python3-lib2to3)
PIP_WHEEL_VERSION=24.3.1
say() { echo "runtime-env: $*"; }

# the pin list: LINES (every line without its comment, in order: the stamp's key), PINS (the NAME==VERSION ones)
[ -f "$PINS_FILE" ] && [ -r "$PINS_FILE" ] || { say "$PINS_FILE: pin list not found"; exit 2; }
LINES=()
PINS=()
while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    line="${line#"${line%%[![:space:]]*}"}"  # leading and trailing blanks off
    line="${line%"${line##*[![:space:]]}"}"
    [ -n "$line" ] || continue
    LINES+=("$line")
    case "$line" in
        -*) ;;
        *==*) PINS+=("$line") ;;
        *) say "$PINS_FILE: '$line' is not a NAME==VERSION pin"; exit 2 ;;
    esac
done <"$PINS_FILE"
[ "${#PINS[@]}" -gt 0 ] || { say "$PINS_FILE: no NAME==VERSION pin in it"; exit 2; }
KEY="debian $SUITE $DEB_VERSION; pip $PIP_WHEEL_VERSION; ${LINES[*]}"

make_link() {
    [ -n "$LINK" ] || return 0
    if [ "$(readlink -f "$LINK" 2>/dev/null)" = "$(readlink -f "$ENV_DIR")" ]; then return 0; fi
    if [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
        say "$LINK exists and is not a link; remove it or set CLOUDKD_RUNTIME_ENV=$LINK"; exit 2
    fi
    ln -sfn "$ENV_DIR" "$LINK"
}

stamp_ok() {
    [ -f "$ENV_DIR/$STAMP_NAME" ] && [ -x "$ENV_DIR/bin/python" ] &&
        grep -qxF "# $KEY" "$ENV_DIR/$STAMP_NAME"
}

if [ -n "$CHECK_ONLY" ]; then
    if stamp_ok; then say "$ENV_DIR is built from $PINS_FILE"; exit 0; fi
    say "$ENV_DIR is not built from the pins of $PINS_FILE: make runtime-env builds it"; exit 1
fi
if stamp_ok; then
    make_link
    say "reusing $ENV_DIR ($(grep -v '^#' "$ENV_DIR/$STAMP_NAME"))"
    exit 0
fi

mkdir -p "$(dirname "$ENV_DIR")" || { say "cannot create $(dirname "$ENV_DIR")"; exit 1; }
# one build at a time per folder (a developer's make test and CI on the same machine)
exec 9>"$ENV_DIR.lock"
flock 9
if stamp_ok; then make_link; say "reusing $ENV_DIR (built meanwhile by another process)"; exit 0; fi

LOG="$ENV_DIR.build.log"
: >"$LOG"
N=0
T0=$(date +%s)
step() {  # step "what" command...: run it, its output to the log; on failure one line, the log's tail, exit 1
    N=$((N + 1))
    local what="$1"; shift
    say "[$N] $what"
    echo "=== [$N] $what: $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        say "FAILED at step $N ($what); the last lines of $LOG:"
        grep -v "^WARNING: Location 'file:" "$LOG" | tail -n 15 | sed 's/^/    /'
        say "FAILED at step $N ($what); full log: $LOG"
        exit 1
    fi
}

# remove only what this script built (a marker, a stamp or its Python), never another folder that ENV_DIR names
if [ -d "$ENV_DIR" ] && [ -n "$(ls -A "$ENV_DIR")" ] && [ ! -e "$ENV_DIR/.cloudkd-runtime-env-building" ] &&
   [ ! -e "$ENV_DIR/$STAMP_NAME" ] && [ ! -e "$ENV_DIR/base/usr/bin/python3.9" ]; then
    say "$ENV_DIR exists and was not built by this script; remove it or set CLOUDKD_RUNTIME_ENV elsewhere"; exit 2
fi
rm -rf "$ENV_DIR"
mkdir -p "$ENV_DIR/apt/lists/partial" "$ENV_DIR/apt/cache/archives/partial" "$ENV_DIR/debs"
touch "$ENV_DIR/.cloudkd-runtime-env-building"
say "building the runtime's Python 3.9 environment in $ENV_DIR (log: $LOG)"

# this machine's Debian mirror (deb822 .sources or one-line .list), the official one otherwise
if [ -z "$MIRROR" ]; then
    MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}')
fi
if [ -z "$MIRROR" ]; then
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
             awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) {print $i; exit}}')
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SIGNED=""
[ -f "$KEYRING" ] && SIGNED="[signed-by=$KEYRING] "
echo "deb ${SIGNED}${MIRROR%/} $SUITE main" >"$ENV_DIR/apt/sources.list"
APT=(-o "Dir::Etc::sourcelist=$ENV_DIR/apt/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$ENV_DIR/apt/lists" -o "Dir::Cache=$ENV_DIR/apt/cache" -o Dir::State::status=/dev/null
     -o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)")
command -v apt-get >/dev/null && command -v dpkg >/dev/null || { say "FAILED: needs apt-get and dpkg (Debian/Ubuntu)"; exit 1; }

step "apt-get update for $SUITE ($MIRROR) with a private APT state" apt-get "${APT[@]}" update
# apt-get update exits 0 when a source could not be reached: the list itself is the proof
step "a $SUITE package list was fetched from $MIRROR" bash -c 'compgen -G "$1/*_Packages*" >/dev/null' _ "$ENV_DIR/apt/lists"
WANT=()
for p in "${DEBS[@]}"; do
    case "$p" in python3.9*|libpython3.9*|python3-distutils|python3-lib2to3) WANT+=("$p=$DEB_VERSION") ;; *) WANT+=("$p") ;; esac
done
step "apt-get download ${DEBS[*]}" bash -c 'cd "$1" && shift && apt-get "$@"' _ "$ENV_DIR/debs" "${APT[@]}" download "${WANT[@]}"
mkdir -p "$ENV_DIR/base"
for deb in "$ENV_DIR"/debs/*.deb; do
    step "dpkg -x $(basename "$deb")" dpkg -x "$deb" "$ENV_DIR/base"
done
LIBDIR="$ENV_DIR/base/usr/lib/x86_64-linux-gnu"
PY39="$ENV_DIR/base/usr/bin/python3.9"
step "python3.9 runs (ssl, ctypes, decimal)" env LD_LIBRARY_PATH="$LIBDIR" "$PY39" -c "import ssl, ctypes, decimal, sys; print(sys.version)"
step "venv --without-pip" env LD_LIBRARY_PATH="$LIBDIR" "$PY39" -m venv --without-pip "$ENV_DIR"
# bin/python: the venv's interpreter with bullseye's libraries found first (python3.9 itself stays the symlink
# that makes it a venv; sys.executable is bin/python3.9, which children started with this environment find too)
for name in python python3; do
    rm -f "$ENV_DIR/bin/$name"
    cat >"$ENV_DIR/bin/$name" <<EOF
#!/bin/sh
# the On Cloud N runtime's interpreter, built by scripts/runtime_env.sh: bullseye's libraries first
LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$ENV_DIR/bin/python3.9" "\$@"
EOF
    chmod +x "$ENV_DIR/bin/$name"
done
PY="$ENV_DIR/bin/python"
step "download the pip $PIP_WHEEL_VERSION wheel (with $BOOT_PY)" "$BOOT_PY" -m pip download -q --no-deps \
    --only-binary=:all: -d "$ENV_DIR/wheels" "pip==$PIP_WHEEL_VERSION"
WHEEL="$ENV_DIR/wheels/pip-$PIP_WHEEL_VERSION-py3-none-any.whl"
step "bootstrap pip from its wheel" "$PY" "$WHEEL/pip" install -q --no-index "$WHEEL"
step "pip install --no-deps -r $PINS_FILE (${#PINS[@]} pins)" "$PY" -m pip install --no-deps --only-binary=:all: \
    -r "$PINS_FILE"
# pip check: every dependency of every package is in the list at a version it accepts; the one disagreement it
# may report is the runtime's own (torchvision 0.9.1 declares torch==1.8.1; the image has torch 1.8.0)
PIP_CHECK='
out=$("$1" -m pip check 2>&1 | grep -v "^WARNING: Location" |
      grep -vxF "torchvision 0.9.1 has requirement torch==1.8.1, but you have torch 1.8.0.")
[ -z "$out" ] || { echo "$out"; exit 1; }
'
step "pip check: the pin list holds every dependency of every package in it" bash -c "$PIP_CHECK" _ "$PY"
CHECK='
import json, sys
pins = dict(p.split("==") for p in sys.argv[2:])
import torch, torchvision, pytorch_lightning, segmentation_models_pytorch as smp, albumentations, numpy, pandas
import tifffile, rasterio, PIL, typer, loguru, timm
from importlib.metadata import version
seen = {k: version(k) for k in pins}
bad = {k: (seen[k], v) for k, v in pins.items() if seen[k] != v}
assert not bad, "versions differ from the pins (seen, pinned): %s" % bad
assert torch.__version__.split("+")[0] == "1.8.0", torch.__version__
torch.set_grad_enabled(False)
m = smp.Unet("resnet34", encoder_weights=None, in_channels=4, classes=1).eval()
assert tuple(m(torch.zeros(1, 4, 64, 64)).shape) == (1, 1, 64, 64)
libs = {"torch": torch, "torchvision": torchvision, "pytorch_lightning": pytorch_lightning,
        "segmentation_models_pytorch": smp, "albumentations": albumentations, "numpy": numpy, "pandas": pandas,
        "tifffile": tifffile, "rasterio": rasterio, "pillow": PIL, "timm": timm}
out = {"python": sys.version.split()[0]}
out.update({k: mod.__version__ for k, mod in libs.items()})
out.update({"typer": version("typer"), "loguru": version("loguru")})
open(sys.argv[1], "w").write(json.dumps(out))
'
step "import check: torch 1.8.0, the runtime's libraries import, every version is its pin, an smp U-Net runs" "$PY" -c "$CHECK" "$ENV_DIR/versions.json" \
    "${PINS[@]}"
VERSIONS=$(cat "$ENV_DIR/versions.json")
rm -rf "$ENV_DIR/apt" "$ENV_DIR/debs" "$ENV_DIR/wheels" "$ENV_DIR/.cloudkd-runtime-env-building"
printf '# %s\n%s\n' "$KEY" "$VERSIONS" >"$ENV_DIR/$STAMP_NAME.tmp" && mv "$ENV_DIR/$STAMP_NAME.tmp" "$ENV_DIR/$STAMP_NAME"
make_link
say "built $ENV_DIR in $(( $(date +%s) - T0 )) s: $VERSIONS"
