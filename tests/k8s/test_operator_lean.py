"""The operator process leaves pandas, pyarrow and scipy unloaded in job mode
(`modelops_operator.lean`): MLflow's client works without them, an import of one says why,
and in-process conversion or MODELOPS_OPERATOR_LEAN=0 leaves imports alone. Each case in a
fresh interpreter (this one has pandas loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys
from modelops_operator import lean
installed = lean.install(os.environ, sys.argv[1])
from mlflow.tracking import MlflowClient  # what the operator's registry uses
import modelops.registry, modelops.rollout.report
out = {"installed": installed, "loaded": [m for m in lean.UNLOADED if m in sys.modules]}
try:
    import pandas
    out["pandas"] = "imported"
except ImportError as exc:
    out["pandas"] = str(exc)
print(json.dumps(out))
"""


def probe(conversion: str, **env) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, conversion], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_job_mode_leaves_pandas_pyarrow_scipy_unloaded():
    out = probe("job")
    assert out["installed"] and out["loaded"] == []
    assert "not loaded in the operator process" in out["pandas"] and "MODELOPS_OPERATOR_LEAN=0" in out["pandas"]


@pytest.mark.parametrize("conversion, env", [("inprocess", {}), ("job", {"MODELOPS_OPERATOR_LEAN": "0"})])
def test_inprocess_conversion_or_the_switch_leave_imports_alone(conversion, env):
    out = probe(conversion, **env)
    assert not out["installed"] and out["pandas"] == "imported" and "pandas" in out["loaded"]
