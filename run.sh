#!/usr/bin/env bash
# heartjax entry point.
#   ./run.sh            set up .venv if needed, then run the main experiment (python -m experiments.volumetric)
#   ./run.sh test [...] set up .venv if needed, then run the test suite (extra arguments go to pytest)
#   ./run.sh exp  [...] set up .venv if needed, then run the experiment with the given arguments
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.requirements.sha256"

hash_requirements() { "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open("requirements.txt","rb").read()).hexdigest())'; }

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "run.sh: heartjax needs Python 3.11 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
    exit 1
  fi
  local want have=""
  want=$(hash_requirements)
  [ -f "$STAMP" ] && have=$(cat "$STAMP")
  if [ -x "$VENV/bin/python" ] && [ "$want" = "$have" ]; then
    echo "run.sh: environment $VENV is up to date with requirements.txt"
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating virtual environment $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
  else
    echo "run.sh: requirements.txt changed; updating $VENV"
  fi
  rm -f "$STAMP"
  echo "run.sh: installing pinned packages from requirements.txt (first time: a few minutes)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$STAMP"
  echo "run.sh: environment ready"
}

setup
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-}" in
  test)
    shift
    echo "run.sh: running the test suite: python -m pytest $*"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  exp)
    shift
    echo "run.sh: python -m experiments.volumetric $*"
    exec "$VENV/bin/python" -m experiments.volumetric "$@"
    ;;
  *)
    echo "run.sh: running the main experiment on the built-in phantom: python -m experiments.volumetric $*"
    exec "$VENV/bin/python" -m experiments.volumetric "$@"
    ;;
esac
