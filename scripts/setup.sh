#!/usr/bin/env bash
# Install modernalbert into the active Python environment, with the extras named as arguments (e.g. `test`).
# torch: an importable torch (CPU or CUDA build) is left alone; only when none is importable is torch==2.13.0
# installed, first, so that pip never resolves an unpinned torch (which would pull several GB of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] no importable torch: installing torch==2.13.0"
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
extras=""
if [ "$#" -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
stamp=".setup-stamp${extras}"
# Reinstall only when the package metadata changed (the install is editable: code edits need nothing).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! "$PY" -c "import modernalbert" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".${extras}"
    touch "$stamp"
fi
