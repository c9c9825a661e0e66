#!/usr/bin/env bash
# Local stack (Kafka on noida-db, BigQuery and GCS emulators) on 127.0.0.1.
# Usage: scripts/stack.sh up|down [kafka|bigquery|gcs ...] | restart SERVICE [--down-seconds N] | status | env [--json]
# Details and overrides: docs/local_stack.md and scripts/local_stack.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${KBML_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
  echo "stack: $PYTHON not found; run scripts/bootstrap.sh first" >&2
  exit 1
fi
exec "$PYTHON" "$ROOT/scripts/local_stack.py" "$@"
