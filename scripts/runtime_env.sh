#!/usr/bin/env bash
# Build the On Cloud N runtime's interpreter and libraries without Docker (`make runtime-env`):
# Python 3.9 (Debian bullseye's python3.9 3.9.2) + torch 1.8.0, numpy 1.20.3, tifffile 2021.8.8, pillow 8.2.0,
# pandas 1.2.5, segmentation-models-pytorch 0.2.1, timm 0.4.12 (and smp's other dependencies at the versions of the
# runtime's day), so `cloudkd submission runtime-test --python .runtime-py39/bin/python` runs main.py the way the
# runtime does.
#
#   scripts/runtime_env.sh [--link PATH] [BOOTSTRAP_PYTHON]
#
# Where: $CLOUDKD_RUNTIME_ENV, default ~/.cache/cloudkd/runtime-py39, outside the clone so that a fresh clone (CI)
# reuses it; --link PATH (the Makefile passes .runtime-py39) is made a symlink to it. BOOTSTRAP_PYTHON (default
# python3) only downloads the pip wheel that bootstraps pip in the new environment.
# Steps: 1. apt-get update + download of the bullseye .debs with a private APT state (a sources list naming
# bullseye, lists and cache under the build folder; the system's apt state is not touched); 2. dpkg -x into
# ENV/base; 3. a venv (ENV itself) without pip, whose bin/python is a wrapper that sets LD_LIBRARY_PATH to
# base/usr/lib/x86_64-linux-gnu (bullseye's libssl1.1, libffi7, libmpdec3); 4. pip bootstrapped from its wheel;
# 5. the pinned packages, every one --no-deps (the full list is pinned below, so nothing can pull a newer torch);
# 6. a check that imports them, runs an smp model and compares every version with its pin; 7. the stamp
# ENV/.cloudkd-runtime-env (the versions as JSON), written last. A present stamp whose pins match this script's
# means the environment is reused as it is; otherwise ENV is removed and built again.
# A failed step ends with one line naming the step, the tail of its log and exit 1.
set -uo pipefail

LINK=""
if [ "${1:-}" = "--link" ]; then LINK="$2"; shift 2; fi
BOOT_PY="${1:-python3}"
ENV_DIR="${CLOUDKD_RUNTIME_ENV:-$HOME/.cache/cloudkd/runtime-py39}"
STAMP_NAME=".cloudkd-runtime-env"
MIRROR="${CLOUDKD_DEBIAN_MIRROR:-}"
SUITE=bullseye
DEB_VERSION=3.9.2-1
DEBS=(python3.9 python3.9-minimal libpython3.9-minimal libpython3.9-stdlib libssl1.1 libffi7 libmpdec3
      python3-distutils python3-lib2to3)
PIP_WHEEL_VERSION=24.3.1
# the runtime's versions (shared/runtime/CONTRACT.md) and, for what it does not name, versions of its day
PINS=(
    torch==1.8.0 numpy==1.20.3 tifffile==2021.8.8 pillow==8.2.0 pandas==1.2.5
    python-dateutil==2.8.2 pytz==2021.1 six==1.16.0 typing-extensions==3.10.0.0
    segmentation-models-pytorch==0.2.1 timm==0.4.12 torchvision==0.9.1 pretrainedmodels==0.7.4
    efficientnet-pytorch==0.6.3 munch==2.5.0 tqdm==4.62.3
)
# pretrainedmodels and efficientnet-pytorch exist only as source; every other package must come as a wheel
SOURCE_OK=pretrainedmodels,efficientnet-pytorch
KEY="debian $SUITE $DEB_VERSION; pip $PIP_WHEEL_VERSION; ${PINS[*]}"

say() { echo "runtime-env: $*"; }

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
step "pip install --no-deps ${PINS[*]}" "$PY" -m pip install --no-deps \
    --only-binary=:all: --no-binary "$SOURCE_OK" "${PINS[@]}"
CHECK='
import json, sys
pins = dict(p.split("==") for p in sys.argv[2:])
import torch, numpy, tifffile, PIL, pandas, torchvision, timm, segmentation_models_pytorch as smp
from importlib.metadata import version
seen = {k: version(k) for k in pins}
bad = {k: (seen[k], v) for k, v in pins.items() if seen[k] != v}
assert not bad, "versions differ from the pins (seen, pinned): %s" % bad
assert torch.__version__.split("+")[0] == "1.8.0", torch.__version__
torch.set_grad_enabled(False)
m = smp.Unet("resnet34", encoder_weights=None, in_channels=4, classes=1).eval()
assert tuple(m(torch.zeros(1, 4, 64, 64)).shape) == (1, 1, 64, 64)
open(sys.argv[1], "w").write(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
                  "tifffile": tifffile.__version__, "pillow": PIL.__version__, "pandas": pandas.__version__,
                  "segmentation_models_pytorch": smp.__version__, "timm": timm.__version__,
                  "torchvision": torchvision.__version__}))
'
step "import check: torch 1.8.0 and every pin, an smp U-Net runs" "$PY" -c "$CHECK" "$ENV_DIR/versions.json" \
    "${PINS[@]}"
VERSIONS=$(cat "$ENV_DIR/versions.json")
rm -rf "$ENV_DIR/apt" "$ENV_DIR/debs" "$ENV_DIR/wheels" "$ENV_DIR/.cloudkd-runtime-env-building"
printf '# %s\n%s\n' "$KEY" "$VERSIONS" >"$ENV_DIR/$STAMP_NAME.tmp" && mv "$ENV_DIR/$STAMP_NAME.tmp" "$ENV_DIR/$STAMP_NAME"
make_link
say "built $ENV_DIR in $(( $(date +%s) - T0 )) s: $VERSIONS"
