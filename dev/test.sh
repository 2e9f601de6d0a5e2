#!/usr/bin/env bash
# The test command (README, .ci/run): install, then the Rust unit tests and the whole pytest suite
# (including tests marked slow). Extra arguments go to pytest, e.g. `bash dev/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/install.sh
(cd rustbpe && cargo test --release --quiet)
# pytest exits 5 when it collects nothing; that is a failure here like any other non-zero exit
$UV run --no-sync python -m pytest "$@"
