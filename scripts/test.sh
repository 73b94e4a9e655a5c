#!/usr/bin/env bash
# Sets up the environment if needed, checks lint and formatting (ruff), then runs the whole test suite
# (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
