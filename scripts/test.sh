#!/usr/bin/env bash
# The test suite: set up .venv, then pytest (real MLflow server, real conversions, real HTTP/gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
