"""What the operator writes for the shadow phase and the performance gate, validated against
KServe's InferenceService CRD and the Kubernetes OpenAPI (kubernetes-validate); what it reads
back from a gate Job. The same objects pass the real API server in tests/cluster/test_cluster_judging.py."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from modelops.deployment.facts import Served
from modelops.deployment.spec import parse_spec
from modelops.rollout.actions import LoadTest
from modelops.rollout.shadow import Mirror
from modelops_operator import access, builders, judging
from modelops_operator.config import OperatorConfig

from .schemas import kserve_schema, schema_errors

MD = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "fraud", "namespace": "ml", "uid": "1234-abcd", "generation": 4}}
SERVED = Served(version="3", onnx_uri="s3://b/onnx3", storage_uri="s3://b/onnx3", sha256="f" * 64, options="x")
CANARY = Served(version="4", onnx_uri="s3://b/onnx4", storage_uri="s3://b/onnx4", sha256="e" * 64, options="x")
RAW = {"model": {"name": "fraud", "alias": "champion"},
       "predictor": {"networkPolicy": {"from": [{"podSelector": {"matchLabels": {"app": "scorer"}}}]}},
       "rollout": {"strategy": "canary", "shadow": {"percent": 20},
                   "performanceGate": {"duration": "5s", "concurrency": 2}}}
JUDGED = parse_spec(RAW)
TEST = LoadTest(version="4", stable_version="3", attempt=2, concurrency=2, duration_seconds=5.0)


def env_of(model: dict) -> dict:
    return {e["name"]: e["value"] for e in model["env"]}


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_every_predictor_is_labelled_and_mounts_the_mirror_configmap(mode):
    spec = parse_spec({**RAW, "predictor": {**RAW["predictor"], "deploymentMode": mode}})
    isvc = builders.build_inference_service(MD, spec, SERVED, canary=CANARY, weight=0)
    access.decorate_inference_service(isvc, spec, OperatorConfig(predictor_access=True))
    judging.decorate_inference_service(isvc, spec)
    assert schema_errors(isvc, kserve_schema("serving.kserve.io_inferenceservices.yaml", "v1beta1")) == []
    predictors = [isvc["spec"]["predictor"], *(c["predictor"] for c in isvc["spec"].get("canary") or [])]
    # Standard: both predictors; Knative: the predictor is the candidate's (KServe keeps the stable revision)
    expected = ("3", "4") if mode == "Standard" else ("4",)
    assert len(predictors) == len(expected)
    for predictor, version in zip(predictors, expected):
        assert predictor["labels"] == {"modelops.dev/deployment": "fraud", "modelops.dev/predictor-version": version}
        # optional: the ConfigMap exists only once mirroring began
        assert predictor["volumes"] == [{"name": "modelops-shadow",
                                         "configMap": {"name": "fraud-shadow", "optional": True}}]
        model = predictor["model"]
        assert {"name": "modelops-shadow", "mountPath": "/etc/modelops/shadow", "readOnly": True} in model["volumeMounts"]
        assert env_of(model)["MODELOPS_SHADOW_CONFIG"] == f"/etc/modelops/shadow/v{version}.json"
        assert env_of(model)["MODELOPS_MODEL_VERSION"] == version


def test_predictors_the_mirror_cannot_call_yet_are_refused_naming_the_field():
    from modelops.errors import InvalidSpec

    judging.check_supported(JUDGED, "none")
    with pytest.raises(InvalidSpec, match=r"spec.rollout.shadow: not available yet with spec.predictor.auth"):
        judging.check_supported(JUDGED, "kubernetes")
    tls = parse_spec({**RAW, "predictor": {"tls": {"secretName": "t"}}})
    with pytest.raises(InvalidSpec, match=r"spec.rollout.shadow: not available yet with spec.predictor.tls"):
        judging.check_supported(tls, "none")
    gate_only = parse_spec({**RAW, "rollout": {"strategy": "canary", "performanceGate": {}}})
    with pytest.raises(InvalidSpec, match=r"spec.rollout.performanceGate: "):
        judging.check_supported(gate_only, "kubernetes")
    judging.check_supported(parse_spec({**RAW, "rollout": {"strategy": "canary"}}), "kubernetes")


def test_a_spec_without_shadow_or_gate_gets_nothing():
    plain = parse_spec({"model": {"name": "fraud", "version": "3"}})
    isvc = builders.build_inference_service(MD, plain, SERVED)
    before = json.dumps(isvc, sort_keys=True)
    assert json.dumps(judging.decorate_inference_service(isvc, plain), sort_keys=True) == before
    gate_only = parse_spec({"model": {"name": "fraud", "version": "3"},
                            "rollout": {"strategy": "canary", "performanceGate": {}}})
    judging.decorate_inference_service(isvc, gate_only)
    assert "volumes" not in isvc["spec"]["predictor"] and "labels" in isvc["spec"]["predictor"]


def test_services_configmap_and_gate_job_validate():
    for role, version in (("candidate", "4"), ("stable", "3")):
        svc = judging.build_service(MD, role, version)
        kubernetes_validate.validate(svc, "1.30", strict=True)
        assert svc["metadata"]["name"] == f"fraud-{role}"
        assert svc["spec"]["selector"] == {"modelops.dev/deployment": "fraud", "modelops.dev/predictor-version": version}
        assert svc["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    mirror = Mirror(candidate="4", stable="3", percent=20)
    cm = judging.build_shadow_configmap(MD, {judging.shadow_key("3"): json.dumps(
        mirror.to_config(judging.service_url(MD, "candidate"), "fraud"))})
    kubernetes_validate.validate(cm, "1.30", strict=True)
    doc = json.loads(cm["data"]["v3.json"])
    assert doc["candidate"] == {"url": "http://fraud-candidate.ml.svc:8080", "model": "fraud", "version": "4"}
    assert doc["percent"] == 20

    job = judging.build_gate_job(MD, TEST, image="modelops:1")
    kubernetes_validate.validate(job, "1.30", strict=True)
    assert job["metadata"]["name"] == "fraud-gate-v4-2"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    (c,) = pod["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["runAsNonRoot"]
    assert c["args"] == ["loadtest", "http://fraud-candidate.ml.svc:8080", "--model", "fraud",
                         "--baseline", "http://fraud-stable.ml.svc:8080", "--concurrency", "2", "--duration", "5s",
                         "--json", "--termination-log", "/dev/termination-log"]
    assert job["spec"]["template"]["metadata"]["labels"]["modelops.dev/component"] == "loadtest"


def test_long_names_stay_within_63_characters():
    md = {**MD, "metadata": {**MD["metadata"], "name": "x" * 63}}
    for name in (judging.service_name("x" * 63, "candidate"), judging.shadow_configmap_name("x" * 63),
                 judging.gate_job_name("x" * 63, TEST)):
        assert len(name) <= 63
    kubernetes_validate.validate(judging.build_gate_job(md, TEST, image="i"), "1.30", strict=True)


def test_the_network_policy_admits_the_mirror_and_the_load_test():
    np = access.build_network_policy(MD, JUDGED)
    kubernetes_validate.validate(np, "1.30", strict=True)
    peers = np["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": "fraud"}}} in peers
    assert {"podSelector": {"matchLabels": {"modelops.dev/deployment": "fraud",
                                            "modelops.dev/component": "loadtest"}}} in peers


def _job(state: str | None, message: str = "") -> dict:
    conditions = [{"type": state, "status": "True", "message": message}] if state else []
    return {"metadata": {"name": "fraud-gate-v4-2"}, "status": {"conditions": conditions}}


def test_gate_result_reads_the_termination_message():
    stable = {"requests": 100, "errors": 0, "throughput_rps": 50.0, "p50_ms": 4.0, "p99_ms": 9.0}
    cand = {**stable, "p99_ms": 30.0}
    assert judging.gate_result(TEST, _job(None), None) is None  # running
    got = judging.gate_result(TEST, _job("Complete"), json.dumps({"stable": stable, "candidate": cand}))
    assert (got.stable, got.candidate, got.error) == (stable, cand, None)
    # the candidate's test could not run: the failure, not a pass
    got = judging.gate_result(TEST, _job("Failed"), json.dumps(
        {"stable": stable, "candidate": {"url": "u"}, "error": "connection refused", "reason": "PredictorUnreachable"}))
    assert got.error.startswith("load-test Job fraud-gate-v4-2: the candidate's test failed: PredictorUnreachable")
    got = judging.gate_result(TEST, _job("Failed", "DeadlineExceeded"), None)
    assert got.error == "load-test Job fraud-gate-v4-2 failed: DeadlineExceeded"
    got = judging.gate_result(TEST, _job("Complete"), "not json")
    assert got.error.startswith("load-test Job fraud-gate-v4-2 complete: not json")
