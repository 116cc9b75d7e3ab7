"""The operator end to end: Kopf against kmock's Kubernetes emulator, with a real MLflow server.

KServe and the Job controller are not running: the tests play their part where needed (mark an
InferenceService ready, run a conversion Job's command and mark the Job complete).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from modelops.deployment.storage import parse_rewrites
from modelops_operator import builders
from modelops_operator.config import OperatorConfig

from .apiserver import ISVC, MD, now
from .conftest import running_operator

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.timeout(120)]

NS = "ml"
JOBS = "batch/v1/jobs"
EVENTS = "v1/events"
# The test MLflow stores artifacts on local disk: tell the operator where KServe would find them.
REWRITES = parse_rewrites(["file://=pvc://mlflow-artifacts", "mlflow-artifacts:/=s3://mlflow-artifacts/"])


def config_for(apiserver, mlflow, **overrides) -> OperatorConfig:
    base = dict(tracking_uri=mlflow.url, conversion="inprocess", resolve_interval=1.0,
                api_url=str(apiserver.url).rstrip("/"), storage_rewrites=REWRITES,
                backoff_base=0.5, backoff_max=2.0, extra_env={"liveness": None})
    base.update(overrides)
    return OperatorConfig(**base)


async def eventually(check, timeout: float = 45, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def md_body(name: str, model: dict, **spec) -> dict:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS}, "spec": {"model": model, **spec}}


async def api(apiserver, method: str, path: str, body=None, content_type="application/merge-patch+json"):
    async with httpx.AsyncClient(base_url=str(apiserver.url)) as client:
        r = await client.request(method, path, json=body,
                                 headers={"Content-Type": content_type} if body is not None else {})
        assert r.status_code < 400, r.text
        return r.json()


async def create_md(apiserver, body: dict) -> dict:
    return await api(apiserver, "POST", f"/apis/modelops.dev/v1alpha1/namespaces/{NS}/modeldeployments", body,
                     content_type="application/json")


async def patch_md(apiserver, name: str, patch: dict) -> dict:
    return await api(apiserver, "PATCH", f"/apis/modelops.dev/v1alpha1/namespaces/{NS}/modeldeployments/{name}", patch)


async def mark_isvc_ready(apiserver, name: str) -> None:
    """What KServe does once the predictor serves."""
    isvc = apiserver.get(ISVC, NS, name)
    await api(apiserver, "PATCH", f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{name}/status",
              {"status": {"url": f"http://{name}.{NS}.example.com",
                          "observedGeneration": isvc["metadata"]["generation"],
                          "conditions": [{"type": "Ready", "status": "True"}]}})


def status(apiserver, name: str) -> dict:
    obj = apiserver.get(MD, NS, name)
    return (obj or {}).get("status") or {}


def condition(apiserver, name: str, type_: str) -> dict:
    return next((c for c in status(apiserver, name).get("conditions", []) if c["type"] == type_), {})


def storage_uri(apiserver, name: str) -> str | None:
    isvc = apiserver.get(ISVC, NS, name)
    return isvc and isvc["spec"]["predictor"]["model"]["storageUri"]


def events_of(apiserver, name: str) -> list[dict]:
    return [o.raw for (res, ns, _), o in apiserver.objects.items()
            if res == apiserver.resource(EVENTS) and not o.deleted
            and o.raw.get("involvedObject", {}).get("name") == name]


async def test_create_converts_in_process_and_deploys(apiserver, mlflow_url_server, registered):
    async with running_operator(config_for(apiserver, mlflow_url_server)):
        await create_md(apiserver, md_body("fraud", {"name": registered["name"], "version": registered["v1"]},
                                           predictor={"gpu": 1, "maxReplicas": 2}))
        uri = await eventually(lambda: storage_uri(apiserver, "fraud"), what="InferenceService")
        isvc = apiserver.get(ISVC, NS, "fraud")
        md = apiserver.get(MD, NS, "fraud")
        assert uri.startswith(("pvc://mlflow-artifacts/", "s3://mlflow-artifacts/")) and uri.rstrip("/").split("/")[-1].startswith("onnx-fp32")
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == "modelops-onnxruntime" and model["modelFormat"] == {"name": "onnx"}
        assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        await eventually(lambda: status(apiserver, "fraud").get("phase") == "Deploying", what="Deploying")
        assert status(apiserver, "fraud")["stable"]["version"] == registered["v1"]
        assert len(status(apiserver, "fraud")["stable"]["sha256"]) == 64

        await mark_isvc_ready(apiserver, "fraud")
        await eventually(lambda: status(apiserver, "fraud").get("phase") == "Ready", what="Ready")
        st = status(apiserver, "fraud")
        assert st["url"] == "http://fraud.ml.example.com" and st["observedGeneration"] == 1
        assert condition(apiserver, "fraud", "Ready")["status"] == "True"
        assert condition(apiserver, "fraud", "Converted")["status"] == "True"
        reasons = await eventually(lambda: {e["reason"] for e in events_of(apiserver, "fraud")} >= {"Deployed", "Ready"}
                                   and {e["reason"] for e in events_of(apiserver, "fraud")}, what="events")
        assert "Converted" in reasons


async def test_alias_move_deploys_the_new_version(apiserver, mlflow_url_server, registered):
    client, name = registered["client"], registered["name"]
    client.set_registered_model_alias(name, "champion", registered["v1"])
    async with running_operator(config_for(apiserver, mlflow_url_server)):
        await create_md(apiserver, md_body("champ", {"name": name, "alias": "champion"}))
        await eventually(lambda: status(apiserver, "champ").get("stable", {}).get("version") == registered["v1"])
        first_uri = storage_uri(apiserver, "champ")
        client.set_registered_model_alias(name, "champion", registered["v2"])
        try:
            await eventually(lambda: status(apiserver, "champ").get("stable", {}).get("version") == registered["v2"],
                             what="alias move picked up")
        finally:
            client.set_registered_model_alias(name, "champion", registered["v1"])
        assert storage_uri(apiserver, "champ") != first_uri
        isvc = apiserver.get(ISVC, NS, "champ")
        assert isvc["metadata"]["labels"][builders.LABEL_VERSION] == registered["v2"]
        assert status(apiserver, "champ")["resolvedVersion"] == registered["v2"]


async def test_spec_edit_is_reconciled_and_observed_generation_updated(apiserver, mlflow_url_server, registered):
    async with running_operator(config_for(apiserver, mlflow_url_server)):
        await create_md(apiserver, md_body("edit", {"name": registered["name"], "version": registered["v1"]}))
        await eventually(lambda: status(apiserver, "edit").get("phase") == "Deploying")
        await mark_isvc_ready(apiserver, "edit")
        await eventually(lambda: status(apiserver, "edit").get("phase") == "Ready")

        md = await patch_md(apiserver, "edit", {"spec": {"predictor": {"maxReplicas": 4, "nodeSelector": {"pool": "a"}}}})
        assert md["metadata"]["generation"] == 2
        await eventually(lambda: status(apiserver, "edit").get("observedGeneration") == 2, what="observedGeneration 2")
        pred = apiserver.get(ISVC, NS, "edit")["spec"]["predictor"]
        assert pred["maxReplicas"] == 4 and pred["nodeSelector"] == {"pool": "a"}
        # KServe has not caught up with the new IS generation yet: not Ready until it does.
        assert status(apiserver, "edit")["phase"] == "Deploying"
        await mark_isvc_ready(apiserver, "edit")
        await eventually(lambda: status(apiserver, "edit").get("phase") == "Ready")
        assert all(c["observedGeneration"] == 2 for c in status(apiserver, "edit")["conditions"])


async def test_same_generation_reconciled_twice_writes_nothing(apiserver, mlflow_url_server, registered):
    config = config_for(apiserver, mlflow_url_server)
    async with running_operator(config):
        await create_md(apiserver, md_body("steady", {"name": registered["name"], "alias": "champion"}))
        await eventually(lambda: status(apiserver, "steady").get("phase") == "Deploying")
        await mark_isvc_ready(apiserver, "steady")
        await eventually(lambda: status(apiserver, "steady").get("phase") == "Ready")
        await asyncio.sleep(1.5)  # let Kopf settle its own bookkeeping
        before = len(apiserver.writes())
        await asyncio.sleep(3.5)  # three alias re-resolves of the same generation
        assert len(apiserver.writes()) == before, [(r.method, r.url.path, r.data) for r in apiserver.writes()[before:]]

    # An operator restart resumes (reconciles) the same generation again: still no writes.
    before = len(apiserver.writes())
    async with running_operator(config):
        await asyncio.sleep(3)
    new = [(r.method, r.url.path, r.data) for r in apiserver.writes()[before:]]
    ours = [w for w in new if "inferenceservices" in w[1] or w[1].endswith("/status") or "/events" in w[1]]
    assert ours == [], ours
    assert new == [], new  # Kopf itself has nothing to write either


async def test_mlflow_down_retries_then_recovers(apiserver, mlflow_url_server, registered):
    async with running_operator(config_for(apiserver, mlflow_url_server)):
        mlflow_url_server.stop()
        try:
            await create_md(apiserver, md_body("down", {"name": registered["name"], "version": registered["v1"]}))
            rec = await eventually(lambda: condition(apiserver, "down", "Reconciling").get("reason") == "RegistryUnavailable"
                                   and condition(apiserver, "down", "Reconciling"), what="RegistryUnavailable")
            assert rec["status"] == "True"
            assert status(apiserver, "down")["phase"] == "Pending"
            assert condition(apiserver, "down", "Stalled")["status"] == "False"
            assert apiserver.get(ISVC, NS, "down") is None
            await asyncio.sleep(2)  # a few backoff rounds while MLflow stays down
        finally:
            mlflow_url_server.start()
        await eventually(lambda: storage_uri(apiserver, "down"), timeout=60, what="recovery")
        await eventually(lambda: condition(apiserver, "down", "Reconciling").get("reason") == "Deploying")
        warnings = [e for e in events_of(apiserver, "down") if e["reason"] == "RegistryUnavailable"]
        assert len(warnings) == 1  # one Event per transition, not per retry


async def test_missing_version_stalls_without_retry_storm(apiserver, mlflow_url_server, registered):
    async with running_operator(config_for(apiserver, mlflow_url_server)):
        await create_md(apiserver, md_body("ghost", {"name": registered["name"], "version": "999"}))
        stalled = await eventually(lambda: condition(apiserver, "ghost", "Stalled").get("status") == "True"
                                   and condition(apiserver, "ghost", "Stalled"), what="Stalled")
        assert stalled["reason"] == "VersionNotFound" and "999" in stalled["message"]
        assert status(apiserver, "ghost")["phase"] == "Failed"
        # the handler's own last write (Kopf's bookkeeping) may land just after the status: let
        # the writes settle for a second, then none may follow
        writes = -1
        while writes != len(apiserver.writes(MD)):
            writes = len(apiserver.writes(MD))
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.5)
        assert len(apiserver.writes(MD)) == writes  # no retries: nothing new to say
        assert apiserver.get(ISVC, NS, "ghost") is None


async def test_deletion_cleans_up_even_with_mlflow_down(apiserver, mlflow_url_server, registered):
    async with running_operator(config_for(apiserver, mlflow_url_server)):
        await create_md(apiserver, md_body("bye", {"name": registered["name"], "alias": "champion"}))
        await eventually(lambda: storage_uri(apiserver, "bye"))
        assert "modelops.dev/finalizer" in apiserver.get(MD, NS, "bye")["metadata"]["finalizers"]
        mlflow_url_server.stop()
        try:
            await api(apiserver, "DELETE", f"/apis/modelops.dev/v1alpha1/namespaces/{NS}/modeldeployments/bye")
            started = time.monotonic()
            await eventually(lambda: apiserver.get(MD, NS, "bye") is None, timeout=15, what="finalizer removed")
            assert time.monotonic() - started < 10
            assert apiserver.get(ISVC, NS, "bye") is None  # garbage-collected via its owner reference
        finally:
            mlflow_url_server.start()


async def test_job_conversion_mode(apiserver, mlflow_url_server, registered):
    """Default mode: a restricted Job converts; the operator picks the published result up."""
    from modelops.conversion import ConversionOptions, convert_and_publish
    from modelops.registry import Registry

    async with running_operator(config_for(apiserver, mlflow_url_server, conversion="job",
                                           converter_image="converter:test")):
        await create_md(apiserver, md_body("jobbed", {"name": registered["name"], "version": registered["v1"]},
                                           conversion={"opset": 18}))
        job = await eventually(lambda: next((o.raw for (r, ns, _), o in apiserver.objects.items()
                                             if r == apiserver.resource(JOBS) and not o.deleted), None), what="Job")
        # The Job is created before the status patch that says so: wait for the patch.
        await eventually(lambda: status(apiserver, "jobbed").get("phase") == "Converting", what="Converting")
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        args = pod["containers"][0]["args"]
        assert args[:2] == ["convert", f"models:/{registered['name']}/{registered['v1']}"]
        assert "--register" in args and args[args.index("--opset") + 1] == "18"
        assert apiserver.get(ISVC, NS, "jobbed") is None

        # Play the Job: its command converts and registers the result, then the Job completes.
        registry = Registry(mlflow_url_server.url)
        resolved = registry.resolve_version(registered["name"], version=registered["v1"])
        await asyncio.to_thread(convert_and_publish, registry, resolved, ConversionOptions(opset=18))
        name = job["metadata"]["name"]
        await api(apiserver, "PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status",
                  {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
        uri = await eventually(lambda: storage_uri(apiserver, "jobbed"), what="InferenceService after the Job")
        assert "onnx-fp32-" in uri
        await eventually(lambda: status(apiserver, "jobbed").get("stable", {}).get("version") == registered["v1"])


async def test_failed_job_reports_the_converters_reason(apiserver, mlflow_url_server, registered):
    """A Job whose converter refused the model stalls with that reason, not a generic failure."""
    async with running_operator(config_for(apiserver, mlflow_url_server, conversion="job",
                                           converter_image="converter:test")):
        await create_md(apiserver, md_body("refused", {"name": registered["name"], "version": registered["v1"]},
                                           conversion={"opset": 17, "tolerance": {"rtol": 0.002, "atol": 0.00002}}))
        job = await eventually(lambda: next((o.raw for (r, ns, _), o in apiserver.objects.items()
                                             if r == apiserver.resource(JOBS) and not o.deleted
                                             and o.raw["metadata"]["labels"].get(builders.LABEL_DEPLOYMENT)
                                             == "refused"), None), what="Job")
        name = job["metadata"]["name"]
        # Play the Job controller: the converter's pod ends with the CLI's one-line reason.
        line = "modelops: ParityFailed: ONNX output diverges from the original model: max_abs_err=0.01"
        await api(apiserver, "POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-abcde", "namespace": NS, "labels": {"job-name": name}},
            "spec": {"containers": [{"name": "convert", "image": "converter:test"}]},
            "status": {"containerStatuses": [{"name": "convert", "state": {
                "terminated": {"exitCode": 4, "message": f"converting...\n{line}\n"}}}]}},
            content_type="application/json")
        await api(apiserver, "PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status",
                  {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                            "reason": "BackoffLimitExceeded"}]}})
        stalled = await eventually(lambda: condition(apiserver, "refused", "Stalled").get("status") == "True"
                                   and condition(apiserver, "refused", "Stalled"), what="Stalled")
        assert stalled["reason"] == "ParityFailed" and "max_abs_err=0.01" in stalled["message"]
        assert status(apiserver, "refused")["phase"] == "Failed"
        assert apiserver.get(ISVC, NS, "refused") is None
