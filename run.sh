#!/usr/bin/env bash
# heartjax entry point.
#   ./run.sh            set up the environment if needed, then run the main experiment (python -m experiments.volumetric)
#   ./run.sh test [...] set up the environment if needed, then run the test suite (extra arguments go to pytest)
#   ./run.sh exp  [...] set up the environment if needed, then run the experiment with the given arguments
#   ./run.sh which      print the accelerator, requirements file and environment this machine gets
#   ./run.sh setup      set up the environment only
# The JAX build follows the machine: CPU (requirements.txt, .venv); NVIDIA GPUs when nvidia-smi finds one
# (requirements-cuda12.txt, .venv-cuda12); or as HEARTJAX_ACCELERATOR says: cpu | cuda12 | cuda13 | tpu.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"

accelerator() {
  local want="${HEARTJAX_ACCELERATOR:-auto}"
  case "$want" in
    auto)
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
        echo cuda12
      else
        echo cpu
      fi ;;
    cuda) echo cuda12 ;;
    cpu|cuda12|cuda13|tpu) echo "$want" ;;
    *)
      echo "run.sh: HEARTJAX_ACCELERATOR=$want is not one of auto, cpu, cuda12, cuda13, tpu" >&2
      exit 1 ;;
  esac
}

ACCEL=$(accelerator)
if [ "$ACCEL" = cpu ]; then
  REQ=requirements.txt VENV=.venv
else
  REQ="requirements-$ACCEL.txt" VENV=".venv-$ACCEL"
fi
STAMP="$VENV/.requirements.sha256"

# The stamp covers the accelerator's file and the CPU pins it includes.
hash_requirements() {
  local files=("$REQ")
  [ "$REQ" = requirements.txt ] || files+=(requirements.txt)
  "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' "${files[@]}"
}

if [ "${1:-}" = which ]; then  # what this machine would get, without installing anything
  echo "$ACCEL $REQ $VENV"
  exit 0
fi

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "run.sh: heartjax needs Python 3.11 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
    exit 1
  fi
  local want have=""
  want=$(hash_requirements)
  [ -f "$STAMP" ] && have=$(cat "$STAMP")
  if [ -x "$VENV/bin/python" ] && [ "$want" = "$have" ]; then
    echo "run.sh: environment $VENV ($ACCEL) is up to date with $REQ"
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating virtual environment $VENV ($ACCEL) with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
  else
    echo "run.sh: $REQ changed; updating $VENV"
  fi
  rm -f "$STAMP"
  echo "run.sh: installing pinned packages from $REQ (first time: a few minutes)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
  echo "$want" > "$STAMP"
  echo "run.sh: environment ready"
}

setup
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-}" in
  setup)
    exit 0
    ;;
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
