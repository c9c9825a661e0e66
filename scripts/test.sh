#!/usr/bin/env bash
# Bootstrap, then run the whole test suite (unit + integration). Extra arguments go to pytest.
# Integration tests start the local stack themselves (tests/conftest.py) and stop it if they
# started it. Fails when pytest collects no tests (exit code 5) instead of passing silently.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
status=0
.venv/bin/python -m pytest "$@" </dev/null || status=$?
if [[ $status -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$status"
