#!/usr/bin/env bash
# A virtualenv of its own for MLServer's Hugging Face runtime (`mlserver-huggingface`), a serving
# peer in scripts/bench_transformers.py. Its pins (transformers 4.x, optimum 1.x, tensorflow)
# conflict with the project's venv (transformers 5), so it lives apart.
#
#   MLSERVER_VENV=/path/to/venv bash scripts/mlserver_venv.sh     # default /work/mlserver-venv
#
# Idempotent: an existing venv whose stamp matches scripts/mlserver-venv.txt is left as it is.
# CPU torch only: torch 2.13.0+cpu is installed first, by itself, from the local wheel
# (pip's find-links); the script stops rather than fall back to a CUDA build, and checks after
# the install that torch has no CUDA and no nvidia-* package came in.
set -euo pipefail

VENV="${MLSERVER_VENV:-/work/mlserver-venv}"
PYTHON="${MLSERVER_PYTHON:-python3.11}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK="$HERE/mlserver-venv.txt"
TORCH="torch==2.13.0+cpu"
STAMP="$VENV/.modelops-lock.sha256"
want="$(sha256sum "$LOCK" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "$VENV/bin/python" -c "import importlib.metadata as m; m.version('mlserver-huggingface')" 2>/dev/null; then
    echo "mlserver venv up to date: $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# 1. torch, CPU build only, without its deps (they come with step 2 under the same pins).
if ! "${PIP[@]}" install --no-deps "$TORCH"; then
    echo "no $TORCH wheel reachable; refusing to install another (possibly CUDA) torch" >&2
    exit 1
fi
# 2. MLServer and its HF runtime, every package pinned by the lock (a constraints file).
"${PIP[@]}" install -c "$LOCK" mlserver mlserver-huggingface

# 3. Checks: CPU torch, no CUDA packages, the runtime imports, pip's own consistency check.
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.version.cuda is None, f"CUDA torch installed: {torch.__version__}"
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
assert not cuda, f"CUDA packages installed: {cuda}"
import mlserver_huggingface  # noqa: F401 (imports torch, tensorflow, optimum, transformers)
print("torch", torch.__version__, "transformers", md.version("transformers"), "mlserver", md.version("mlserver"),
      "mlserver-huggingface", md.version("mlserver-huggingface"))
EOF
"${PIP[@]}" check
echo "$want" > "$STAMP"
echo "mlserver venv ready: $VENV (mlserver start DIR: $VENV/bin/mlserver)"
