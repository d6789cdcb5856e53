#!/usr/bin/env bash
# One entry point for the two README commands; each creates the environment it needs.
#   bash scripts/dev.sh main   -> the main job: export -> calibrate -> bench the embedded default
#   bash scripts/dev.sh test   -> ruff + mypy + the import-layer contract + the whole test suite (what CI runs)
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
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev,video]"
  echo "$want" > "$stamp"
}

web_deps() {
  # tests/test_app_web.py drives apps/web in Debian's headless chromium with npm's onnxruntime-web and
  # playwright-core; install what is missing (as root, or with password-less sudo), skip what is there.
  local sudo=""
  [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && sudo="sudo -n"; } || true
  if ! command -v chromium >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
      local pkgs=""
      command -v chromium >/dev/null 2>&1 || pkgs="chromium"
      command -v npm >/dev/null 2>&1 || pkgs="$pkgs nodejs npm"
      $sudo apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $pkgs >/dev/null
    else
      echo "dev.sh: chromium/npm missing and no root to apt-get them: the browser test will skip" >&2
    fi
  fi
  # npm packages: reinstall only when package-lock.json changes (stamp = its hash)
  local lock=apps/web/package-lock.json stamp=apps/web/node_modules/.rapsam-stamp want
  if command -v npm >/dev/null 2>&1; then
    want=$(sha256sum "$lock" | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
      (cd apps/web && npm ci --no-audit --no-fund --loglevel=error)
      echo "$want" > "$stamp"
    fi
  fi
}

cmd=${1:-test}; shift || true
bootstrap
export NNCF_CI=1   # keep nncf telemetry out of ~/intel in tests
case "$cmd" in
  main)
    "$VENV/bin/rapsam-edge" bench --out runs/main "$@" ;;
  test)
    "$VENV/bin/ruff" check rapsam_edge tests apps scripts
    "$VENV/bin/mypy"   # pyproject.toml [tool.mypy]: rapsam_edge, apps, scripts and tests
    "$VENV/bin/lint-imports"   # the layer map of pyproject.toml [tool.importlinter] (README "Layout")
    web_deps
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" ;;
  *)
    echo "usage: bash scripts/dev.sh main|test [extra args]" >&2; exit 2 ;;
esac
