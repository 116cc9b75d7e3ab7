#!/usr/bin/env bash
# Build (and optionally push) the three ModelOps images on a machine with Docker.
#
#   scripts/build-images.sh                 # build ghcr.io/modelops/modelops-{operator,converter,predictor}:<appVersion>
#   scripts/build-images.sh --push          # ... and push them
#   scripts/build-images.sh --registry r.example.com/ml --tag 0.1.0-rc1 --platform linux/amd64
#   scripts/build-images.sh --dry-run       # print the commands only (no Docker needed)
#   scripts/build-images.sh --lock          # rewrite docker/constraints.txt from .venv (a tested env)
#
# The tag defaults to the chart's appVersion (helm/modelops/Chart.yaml), which is what the chart's
# image tags default to. Every pip install in the images is pinned by docker/constraints.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REGISTRY=ghcr.io/modelops
TAG=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/helm/modelops/Chart.yaml")
PLATFORM=""
PUSH=0
DRY=0
IMAGES=(operator converter predictor)

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

lock() {
  local py="${PYTHON:-$ROOT/.venv/bin/python}"
  local ort
  ort=$("$py" -m pip freeze | sed -n 's/^onnxruntime==//p')
  {
    echo "# Exact versions for the images (pip install -c docker/constraints.txt): what the test suite ran with."
    echo "# Refresh from a tested environment: scripts/build-images.sh --lock"
    "$py" -m pip freeze --exclude-editable \
      | grep -v -i -E '^(pytest|pytest-asyncio|pytest-timeout|kmock|cel-python|lupa|kubernetes-validate|helm-python-sdk|pluggy|iniconfig)=='
    echo "onnxruntime-gpu==$ort"
  } > "$ROOT/docker/constraints.txt"
  echo "wrote docker/constraints.txt"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --push) PUSH=1 ;;
    --dry-run) DRY=1 ;;
    --registry) REGISTRY=$2; shift ;;
    --tag) TAG=$2; shift ;;
    --platform) PLATFORM=$2; shift ;;
    --lock) lock; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [[ -z "$TAG" ]]; then
  echo "build-images.sh: no appVersion in helm/modelops/Chart.yaml; pass --tag" >&2
  exit 2
fi

run() {
  printf '%q ' "$@"; echo
  if [[ $DRY -eq 0 ]]; then "$@"; fi
}

if [[ $DRY -eq 0 ]] && ! docker info >/dev/null 2>&1; then
  echo "build-images.sh: no Docker engine reachable (docker info failed); --dry-run prints the commands" >&2
  exit 1
fi

for name in "${IMAGES[@]}"; do
  ref="$REGISTRY/modelops-$name:$TAG"
  args=(docker build -f "docker/${name}.Dockerfile" -t "$ref"
        --label "org.opencontainers.image.version=$TAG"
        --label "org.opencontainers.image.source=https://github.com/modelops/modelops")
  [[ -n "$PLATFORM" ]] && args+=(--platform "$PLATFORM")
  (cd "$ROOT" && run "${args[@]}" .)
  # The entrypoint must run: each image answers its subcommand's --help.
  case "$name" in
    operator) sub=operator ;; converter) sub=convert ;; predictor) sub=serve ;;
  esac
  run docker run --rm "$ref" "$sub" --help
  if [[ $PUSH -eq 1 ]]; then run docker push "$ref"; fi
done
