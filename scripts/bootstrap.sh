#!/usr/bin/env bash
# Create .venv and install ModelOps with its test tools. Idempotent: re-installs only when
# pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.modelops-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in pyproject.toml (2.13.0, CPU build): an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi
# A real Prometheus for the canary-analysis tests (Debian's package). Installed as root only;
# without it those tests skip with the reason (and fail under CI=true). The package's own service
# is not used: the tests start their own server on a free port, so stop it if it runs.
if ! command -v prometheus >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    >/dev/null 2>&1 || echo "bootstrap: could not install prometheus; its tests will skip" >&2
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v service >/dev/null; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
fi
