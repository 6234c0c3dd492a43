#!/usr/bin/env bash
# Create .venv with the pinned Detectron2 stack (see README "Environment").
# Idempotent: does nothing when .venv already imports detectron2 and cellseg_d2.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
# The napari plugin is found through the package's entry point (setup.py), made by `pip install -e .`
PLUGIN_REGISTERED="import importlib.metadata as m; assert any(e.name == 'cellseg-d2' for e in m.entry_points(group='napari.manifest'))"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import detectron2, cellseg_d2" 2>/dev/null; then
    # An existing .venv gets what requirements.txt added since it was made.
    if ! "$VENV/bin/python" -c "import tifffile, imagecodecs, roifile, png, skimage, faster_coco_eval, distributed, ome_zarr" 2>/dev/null; then
        echo "[setup] installing new requirements into $VENV"
        "$VENV/bin/python" -m pip install -q -r requirements.txt
    fi
    if ! "$VENV/bin/python" -c "import cellpose" 2>/dev/null; then
        echo "[setup] installing the Cellpose peer into $VENV"
        "$VENV/bin/python" -m pip install -q -c requirements.txt -r requirements-cellpose.txt
    fi
    if ! "$VENV/bin/python" -c "import napari" 2>/dev/null; then
        echo "[setup] installing napari (the plugin's extra) into $VENV"
        "$VENV/bin/python" -m pip install -q -c requirements.txt -r requirements-napari.txt
    fi
    if ! "$VENV/bin/python" -c "$PLUGIN_REGISTERED" 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    fi
    exit 0
fi

find_python310() {
    if [ -n "${PYTHON310:-}" ]; then echo "$PYTHON310"; return 0; fi
    local c
    # The pyenv shim refuses to run when the global version is not 3.10, so look for real binaries.
    for c in "$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
        if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    if PYENV_VERSION=3.10.13 python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
        PYENV_VERSION=3.10.13 python3.10 -c 'import sys; print(sys.executable)'; return 0
    fi
    return 1
}

PY=$(find_python310) || {
    echo "error: CPython 3.10 not found (sal-detectron2 0.7.2 ships only a cp310 wheel)." >&2
    echo "       install it (e.g. 'pyenv install 3.10.13') or set PYTHON310=/path/to/python3.10" >&2
    exit 1
}
echo "[setup] creating $VENV with $PY"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
# The peer model (optional extra), constrained to the pinned torch / numpy.
"$VENV/bin/python" -m pip install -q -c requirements.txt -r requirements-cellpose.txt
# The napari plugin's extra (napari + PyQt5), constrained the same way.
"$VENV/bin/python" -m pip install -q -c requirements.txt -r requirements-napari.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import detectron2, torch, cellseg_d2; print('[setup] detectron2', detectron2.__version__, 'torch', torch.__version__)"
