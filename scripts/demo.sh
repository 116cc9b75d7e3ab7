#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then MLflow -> ONNX -> served predictions.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/modelops demo "$@"
