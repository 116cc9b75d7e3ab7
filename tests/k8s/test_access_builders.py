"""What the operator adds for predictor access (auth, TLS, NetworkPolicy), validated against
KServe's InferenceService CRD and the Kubernetes OpenAPI (kubernetes-validate)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from modelops.deployment.facts import Served
from modelops.deployment.spec import parse_spec
from modelops.errors import InvalidSpec
from modelops_operator import access, builders
from modelops_operator.config import OperatorConfig

from .schemas import kserve_schema, schema_errors

MD = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "fraud", "namespace": "ml", "uid": "1234-abcd", "generation": 4}}
SERVED = Served(version="3", onnx_uri="s3://b/onnx3", storage_uri="s3://b/onnx3", sha256="f" * 64, options="x")
CANARY = Served(version="4", onnx_uri="s3://b/onnx4", storage_uri="s3://b/onnx4", sha256="e" * 64, options="x")
SECURED = parse_spec({
    "model": {"name": "fraud", "alias": "champion"},
    "predictor": {"auth": "kubernetes", "tls": {"secretName": "fraud-tls"},
                  "networkPolicy": {"from": [
                      {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}},
                      {"podSelector": {"matchLabels": {"app": "scorer"}}}]}},
})
CONFIG = OperatorConfig(predictor_access=True, predictor_audiences=("modelops.dev/predict", "fraud"),
                        predictor_scraper_peer={"namespaceSelector": {"matchLabels": {
                            "kubernetes.io/metadata.name": "monitoring"}}})


@pytest.fixture(scope="module")
def isvc_schema():
    return kserve_schema("serving.kserve.io_inferenceservices.yaml", "v1beta1")


def test_auth_and_tls_on_every_predictor_stable_and_canary(isvc_schema):
    isvc = builders.build_inference_service(MD, SECURED, SERVED, canary=CANARY, weight=10)
    access.decorate_inference_service(isvc, SECURED, CONFIG)
    assert schema_errors(isvc, isvc_schema) == []
    for predictor in (isvc["spec"]["predictor"], isvc["spec"]["canary"][0]["predictor"]):
        assert predictor["serviceAccountName"] == "modelops-predictor"
        assert predictor["volumes"] == [{"name": "modelops-tls", "secret": {"secretName": "fraud-tls"}}]
        model = predictor["model"]
        env = {e["name"]: e["value"] for e in model["env"]}
        assert env["MODELOPS_AUTH"] == "kubernetes" and env["MODELOPS_AUTH_DEPLOYMENT"] == "fraud"
        assert env["MODELOPS_AUTH_AUDIENCES"] == "modelops.dev/predict,fraud"
        assert (env["MODELOPS_TLS_CERT"], env["MODELOPS_TLS_KEY"]) == ("/etc/modelops/tls/tls.crt",
                                                                       "/etc/modelops/tls/tls.key")
        assert model["volumeMounts"][0]["readOnly"] is True
        assert model["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_nothing_added_without_auth_or_tls_and_the_operator_default_applies(isvc_schema):
    plain = parse_spec({"model": {"name": "fraud", "version": "3"}})
    isvc = builders.build_inference_service(MD, plain, SERVED)
    before = repr(isvc)
    access.decorate_inference_service(isvc, plain, OperatorConfig())
    assert repr(isvc) == before
    access.decorate_inference_service(isvc, plain, OperatorConfig(predictor_auth="kubernetes"))
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "modelops-predictor"
    explicit_none = parse_spec({"model": {"name": "fraud", "version": "3"}, "predictor": {"auth": "none"}})
    assert access.effective_auth(explicit_none, OperatorConfig(predictor_auth="kubernetes")) == "none"


def test_service_account_binding_and_network_policy_validate():
    sa = access.build_predictor_service_account(MD)
    kubernetes_validate.validate(sa, "1.30", strict=True)
    assert sa["metadata"]["ownerReferences"][0]["controller"] is False  # shared by the namespace's predictors
    other = {"metadata": {**MD["metadata"], "name": "churn", "uid": "5678"}}
    patch = access.service_account_patch(sa, other)
    assert [o["uid"] for o in patch["metadata"]["ownerReferences"]] == ["1234-abcd", "5678"]
    assert access.service_account_patch(sa, MD) is None

    crb = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": "modelops-predictor-auth"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"}}
    patch = access.binding_patch(crb, "ml")
    assert patch == {"subjects": [{"kind": "ServiceAccount", "name": "modelops-predictor", "namespace": "ml"}]}
    assert access.binding_patch({**crb, **patch}, "ml") is None
    kubernetes_validate.validate({**crb, **patch}, "1.30", strict=True)

    np = access.build_network_policy(MD, SECURED, CONFIG.predictor_scraper_peer)
    kubernetes_validate.validate(np, "1.30", strict=True)
    assert np["metadata"]["name"] == "fraud-predictor"
    assert np["spec"]["podSelector"] == {"matchLabels": {"serving.kserve.io/inferenceservice": "fraud"}}
    (rule,) = np["spec"]["ingress"]
    assert len(rule["from"]) == 3 and rule["from"][-1] == CONFIG.predictor_scraper_peer
    assert {p["port"] for p in rule["ports"]} == {8080, 8081}


def test_an_operator_without_predictor_access_refuses_naming_the_field():
    with pytest.raises(InvalidSpec, match="spec.predictor.auth: kubernetes needs"):
        access.check_available(SECURED, OperatorConfig())
    only_np = parse_spec({"model": {"name": "m", "version": "1"},
                          "predictor": {"networkPolicy": {"from": [{"podSelector": {}}]}}})
    with pytest.raises(InvalidSpec, match="spec.predictor.networkPolicy"):
        access.check_available(only_np, OperatorConfig())
    access.check_available(SECURED, CONFIG)
