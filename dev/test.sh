#!/usr/bin/env bash
# The test command (README, .ci/run): install, then ruff, the Rust unit tests and the whole pytest suite
# (including tests marked slow). Extra arguments go to pytest, e.g. `bash dev/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/install.sh
# the UI tests drive a real headless browser: Debian's chromium, installed when we can (root + apt)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "[test] could not install chromium: the browser tests will be skipped"
fi
# lint first: ruff's rules and line length are in pyproject.toml
$UV run --no-sync ruff check .
(cd rustbpe && cargo test --release --quiet)
# pytest exits 5 when it collects nothing; that is a failure here like any other non-zero exit
$UV run --no-sync python -m pytest "$@"
