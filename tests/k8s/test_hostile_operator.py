"""A hostile model in MLflow, the operator in job mode (kmock emulator + a real MLflow server).

The registered version is a pickled PyTorch model whose `__reduce__` writes a marker file. The
operator resolves it and creates a conversion Job without ever loading it; the Job's own command
(run here as the converter image would run it) refuses it before unpickling; the ModelDeployment
stalls with the converter's reason, UntrustedArtifact, and MLflow records the refusal. The marker
never appears. (A control in tests/core/test_core_hostile_artifacts.py shows the same payload does
write it when unpickled the usual way.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from modelops_operator import builders

from .apiserver import ISVC
from .conftest import running_operator
from .test_operator_kmock import JOBS, NS, api, condition, config_for, create_md, eventually, md_body, status

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.timeout(240)]

MODELOPS = str(Path(sys.executable).parent / "modelops")


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class Trojan(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 3))
        self.extra = Payload(marker)

    def forward(self, x):
        return self.net(x)


def register_hostile(tracking_uri: str, root: Path, marker: Path) -> tuple[str, str]:
    import mlflow
    import mlflow.pytorch

    from modelops.demo.models import train_mlp

    d = root / "model"
    mlflow.pytorch.save_model(train_mlp(0), str(d), serialization_format="pickle",
                              input_example=np.zeros((2, 16), np.float32), pip_requirements=["torch"])
    torch.save(Trojan(str(marker)), str(d / "data" / "model.pth"))
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("hostile")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(d), "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
    shutil.rmtree(d)
    return name, str(version)


async def test_job_mode_never_deserializes_a_hostile_model(apiserver, mlflow_url_server, tmp_path):
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "pwned"
    name, version = await asyncio.to_thread(register_hostile, mlflow_url_server.url, tmp_path, marker)
    config = config_for(apiserver, mlflow_url_server, conversion="job", converter_image="converter:test")
    async with running_operator(config):
        await create_md(apiserver, md_body("trojan", {"name": name, "version": version}))
        job = await eventually(lambda: next((o.raw for (r, ns, _), o in apiserver.objects.items()
                                             if r == apiserver.resource(JOBS) and not o.deleted
                                             and o.raw["metadata"]["labels"].get(builders.LABEL_DEPLOYMENT)
                                             == "trojan"), None), what="conversion Job")
        assert status(apiserver, "trojan")["phase"] == "Converting"
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert not marker.exists(), "the operator process deserialized the model"

        # Play the Job: its own command, as the converter image runs it.
        container = pod["containers"][0]
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
               "HOME": str(tmp_path)}
        args = list(container["args"])
        args[args.index("--output") + 1] = str(tmp_path / "out")  # the pod's /tmp, here
        r = await asyncio.to_thread(subprocess.run, [MODELOPS, *args], capture_output=True,
                                    text=True, env=env, cwd=tmp_path, timeout=180)
        assert r.returncode == 4, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("modelops: UntrustedArtifact: the pickled PyTorch model"), last
        assert not marker.exists(), "the converter unpickled the payload"

        # The Job controller's part: the pod ends with that line, the Job fails.
        job_name = job["metadata"]["name"]
        await api(apiserver, "POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job_name}-abcde", "namespace": NS, "labels": {"job-name": job_name}},
            "spec": {"containers": [{"name": container["name"], "image": "converter:test"}]},
            "status": {"containerStatuses": [{"name": container["name"], "state": {
                "terminated": {"exitCode": 4, "message": r.stderr[-4000:]}}}]}},
            content_type="application/json")
        await api(apiserver, "PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/{job_name}/status",
                  {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                            "reason": "BackoffLimitExceeded"}]}})
        stalled = await eventually(lambda: condition(apiserver, "trojan", "Stalled").get("status") == "True"
                                   and condition(apiserver, "trojan", "Stalled"), what="Stalled")
        assert stalled["reason"] == "UntrustedArtifact", stalled
        assert "builtins.exec" in stalled["message"]
        assert status(apiserver, "trojan")["phase"] == "Failed"
        assert apiserver.get(ISVC, NS, "trojan") is None

    tags = MlflowClient(mlflow_url_server.url).get_model_version(name, version).tags
    assert tags["modelops.conversion.status"] == "failed" and "builtins.exec" in tags["modelops.conversion.error"]
    assert not marker.exists()
