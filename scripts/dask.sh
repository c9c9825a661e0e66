#!/usr/bin/env bash
# Local dask.distributed cluster for --runner=DaskRunner: a scheduler and N workers on 127.0.0.1.
# Usage: scripts/dask.sh up [--workers N] [--threads T] | down | status | address
# Details: scripts/local_dask.py and docs/scaling.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${KBML_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
  echo "dask: $PYTHON not found; run scripts/bootstrap.sh first" >&2
  exit 1
fi
exec "$PYTHON" "$ROOT/scripts/local_dask.py" "$@"
