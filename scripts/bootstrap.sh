#!/usr/bin/env bash
# Creates .venv (Python 3.10, which Rasa 3.6 needs) and installs Jisr with its
# pinned dependencies. Does nothing when requirements.lock and pyproject.toml
# have not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  if [ -n "${JISR_PYTHON:-}" ]; then echo "$JISR_PYTHON"; return; fi
  for candidate in python3.10 "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.10"*/bin/python3.10)" /usr/bin/python3.10 /usr/local/bin/python3.10; do
    for c in $candidate; do
      if [ -x "$(command -v "$c" 2>/dev/null || echo "$c")" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
        echo "$c"; return
      fi
    done
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python) || {
    echo "Jisr needs Python 3.10 (Rasa 3.6 supports 3.8-3.10). Install it (pyenv install 3.10, or your system's python3.10) or set JISR_PYTHON." >&2
    exit 1
  }
  echo "Creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi

stamp=.venv/.jisr-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing Jisr's dependencies into .venv (a few minutes the first time)…" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
