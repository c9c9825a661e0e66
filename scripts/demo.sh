#!/usr/bin/env bash
# The local end-to-end demo: installs what it needs (scripts/bootstrap.sh), then runs
# `python -m pipelines.demo` with your arguments (see --help): events into Kafka, export to
# GCS/BigQuery emulators, training, live scoring, a summary table. Ctrl-C stops everything it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pipelines.demo "$@"
