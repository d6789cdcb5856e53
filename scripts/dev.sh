#!/usr/bin/env bash
# One entry point for the two README commands; each creates the environment it needs.
#   bash scripts/dev.sh main   -> the main job on the embedded default photos
#   bash scripts/dev.sh test   -> ruff + the whole test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAPSAM_VENV:-.venv}
PY=${PYTHON:-python3}

bootstrap() {
  # Reinstall only when pyproject/constraints change (stamp = their hash).
  local stamp="$VENV/.rapsam-stamp" want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -U pip
  # torch FIRST: installed alone it resolves to the CPU wheel here; later deps then see it satisfied.
  "$VENV/bin/python" -m pip install -q "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
}

cmd=${1:-test}; shift || true
bootstrap
export NNCF_CI=1   # keep nncf telemetry out of ~/intel in tests
case "$cmd" in
  main)
    "$VENV/bin/rapsam-edge" predict --out runs/main "$@" ;;
  test)
    "$VENV/bin/ruff" check rapsam_edge tests
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" ;;
  *)
    echo "usage: bash scripts/dev.sh main|test [extra args]" >&2; exit 2 ;;
esac
