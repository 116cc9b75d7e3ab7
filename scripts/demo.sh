#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then `modelops demo`: MLflow -> ONNX -> a good version
# through its performance gate, shadow phase and canary steps, promoted; an erroring one rolled back by
# its success rate; a silently wrong one rolled back in shadow (no client answered by it); a slow one
# stopped by its gate at weight 0. All on this machine (two to three minutes on 2 cores).
# Extra arguments pass through, e.g. `scripts/demo.sh --keep-running`, `--interval 5s`, `--json out.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/modelops demo "$@"
