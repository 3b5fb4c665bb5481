#!/usr/bin/env bash
# Sets up and runs every check CI runs: ruff, mypy --strict, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests >/dev/null || echo "note: ruff format would reformat files"
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
