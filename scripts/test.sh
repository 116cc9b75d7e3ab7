#!/usr/bin/env bash
# The test suite: set up .venv, then pytest (real MLflow server, real conversions, real HTTP/gRPC).
#
# With no test paths, the suite runs as two disjoint shares side by side (`--share`, tests/conftest.py):
#   core: tests/core without the control plane (MLflow, conversions, predictors, local mode, Prometheus)
#   rest: tests/k8s, tests/cluster, tests/helm and the core tests on the real control plane
# Each pytest process has its own MLflow server, Prometheus and temporary directory; only `rest`
# starts the control plane. Most of the suite waits on servers and analysis intervals, so the two
# shares together take far less than one after the other. The `rest` share's output streams; the
# `core` share's is printed when both have ended. MODELOPS_TEST_SERIAL=1: one pytest process.
# With test paths (e.g. `scripts/test.sh tests/core -x`): one pytest process over them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
py=.venv/bin/python
for arg in "$@"; do
  [[ "$arg" == tests* || "$arg" == ./tests* ]] && MODELOPS_TEST_SERIAL=1
done
if [[ "${MODELOPS_TEST_SERIAL:-0}" == 1 ]]; then
  exec "$py" -m pytest "$@"
fi
mkdir -p .work
core_log=.work/test-core.log
start=$(date +%s)
"$py" -m pytest -p no:cacheprovider --share core --basetemp .work/pytest-core "$@" >"$core_log" 2>&1 &
core_pid=$!
trap 'kill "$core_pid" 2>/dev/null || true' INT TERM
rest_rc=0
"$py" -m pytest -p no:cacheprovider --share rest --basetemp .work/pytest-rest "$@" || rest_rc=$?
core_rc=0
wait "$core_pid" || core_rc=$?
echo
echo "=================== the core share (tests/core without the control plane), run beside the above ==================="
cat "$core_log"
echo
echo "suite: rest share rc=$rest_rc, core share rc=$core_rc, $(( $(date +%s) - start )) s wall"
# pytest's 5 (no tests collected) in one share is a failure of the suite too
if (( rest_rc != 0 || core_rc != 0 )); then exit 1; fi
