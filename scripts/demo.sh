#!/usr/bin/env bash
# The main job: sets the machine up, then runs the demo (packs skewed-length data, runs varlen
# attention, prints memory saved against padding and that the results match).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
"${PYTHON:-python3}" examples/demo.py "$@"
