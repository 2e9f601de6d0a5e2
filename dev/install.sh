#!/usr/bin/env bash
# Installs everything nanochat needs into ./.venv, starting from python3 + pip + cargo:
# uv from PyPI when it is missing, then `uv sync` (which builds rustbpe with maturin).
# Sourced by speedrun.sh and dev/test.sh; afterwards "$UV" runs uv.
set -euo pipefail
if command -v uv >/dev/null 2>&1; then
    UV=uv
else
    if ! python3 -m uv --version >/dev/null 2>&1; then
        echo "[install] uv not found: installing it from PyPI with pip"
        python3 -m pip install --quiet uv 2>/dev/null \
            || python3 -m pip install --quiet --user --break-system-packages uv
    fi
    UV="python3 -m uv"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "[install] cargo is required to build rustbpe: install Rust (https://rustup.rs) and re-run" >&2
    exit 1
fi
$UV sync --locked "$@"
