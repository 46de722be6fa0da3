#!/usr/bin/env bash
# Install napari-focsam (editable) with its test tools into ./.venv.
#
# - CPU PyTorch is pinned (TORCH_SPEC, default torch==2.13.0) and installed first through a
#   constraints file, so nothing can pull a multi-GB CUDA build in behind our back.
# - uv is used when it can be installed (about 10x faster); plain pip otherwise.
# - As root on Debian/Ubuntu, the X virtual frame buffer and the xcb libraries that Qt needs
#   for the headless viewer tests are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  for pkg in xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libgl1 libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
constraints=$(mktemp)
echo "$TORCH_SPEC" > "$constraints"

if .venv/bin/python -m pip install -q uv >/dev/null 2>&1; then
  links=()
  [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
  inst() { .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python "${links[@]}" -c "$constraints" "$@"; }
else
  inst() { .venv/bin/python -m pip install -q -c "$constraints" "$@"; }
fi
inst "$TORCH_SPEC"
inst -e ".[testing]"
rm -f "$constraints"
.venv/bin/python -c "import torch, napari_focsam; print('setup: napari-focsam', napari_focsam.__version__, 'torch', torch.__version__)"
