#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then `modelops demo`: MLflow -> ONNX -> a canary
# promoted step by step and a bad version rolled back, all on this machine (about a minute).
# Extra arguments pass through, e.g. `scripts/demo.sh --keep-running` or `--interval 5s`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/modelops demo "$@"
