#!/usr/bin/env bash
# Sets up the environment if needed, checks lint and formatting (ruff) and the import rules (import-linter), builds
# the docs site strictly (a broken link fails), then runs the test suite. `--fast` runs the fast tier only (the tests
# not marked slow: every module touched, for the edit-test loop); CI runs the whole suite. Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
selection=()
if [ "${1:-}" = "--fast" ]; then
  shift
  selection=(-m "not slow")
fi
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache > .venv/lint-imports.log || { cat .venv/lint-imports.log; exit 1; }
site=$(mktemp -d)
# not --quiet: it hides the warnings strict mode counts, and a broken link would pass
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site" > "$site.log" 2>&1 || { cat "$site.log"; exit 1; }
rm -rf "$site" "$site.log"
# One pytest-xdist worker per core (at most 4; VGGDEPLOY_TEST_WORKERS=0 runs in one process), each test file on one
# worker (its module fixtures built once); the tiny model and its export are built once for all (tests/conftest.py).
workers=${VGGDEPLOY_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "${selection[@]}" "$@"
