#!/usr/bin/env bash
# Install errand with its test dependencies in .venv, then run every check and every test.
# PostgreSQL tests use $ERRAND_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test);
# they skip when no server answers, except in CI (CI=true) where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/ruff check src tests scripts
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/pytest "$@"
