#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system tools, the project venv (.venv, Python 3.11)
# with the package and its dev extras, and the local stack's venvs under .stack/ (BigQuery emulator,
# model server).
# Cheap when nothing changed: each step checks before it acts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "bootstrap: $*" >&2; }

apt_install() {
  log "installing $* with apt-get"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null
}

# -- system packages (only what is missing) --------------------------------------------------------
missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v git >/dev/null 2>&1 || missing+=(git)
# the local stack's MQTT broker (scripts/local_stack.py runs it; the package's own service stays off)
[[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
[[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"

# -- Python 3.11 for the project venv (pyenv's, else Debian 12's python3) --------------------------
find_python311() {
  local candidate
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.11.*/bin/python; do
      [[ -x "$candidate" ]] && { echo "$candidate"; return; }
    done
  fi
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      command -v "$candidate"; return
    fi
  done
  return 1
}

if [[ ! -x .venv/bin/python ]]; then
  PY311="$(find_python311)" || { apt_install python3 python3-venv; PY311="$(find_python311)"; } || {
    log "Python 3.11 not found (Debian 12 ships it as python3)"; exit 1; }
  "$PY311" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  log "creating .venv with $PY311"
  "$PY311" -m venv .venv
fi

# -- the package and dev extras: re-installed only when setup.py / pyproject.toml changed ---------
stamp=.venv/.kbml-setup-hash
wanted="$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
  log "pip install -e .[dev] (setup.py or pyproject.toml changed)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" </dev/null
  echo "$wanted" >"$stamp"
fi

# -- local stack servers (BigQuery emulator and model server venvs under .stack/) ------------------
bash scripts/stack.sh install
log "ready"
