#!/usr/bin/env bash
# Builds the documentation (docs/: quickstart, migration guide, API reference from the docstrings)
# into build/docs/html with Sphinx, warnings as errors: a docstring that does not render fails.
# Run by scripts/test.sh (so by CI); needs the docs extra (pip install -e ".[docs]").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
rm -rf build/docs
"$PY" -m sphinx -E -W --keep-going -q -b html docs build/docs/html
echo "docs: build/docs/html/index.html"
