"""Static checks of manifests/, the Helm chart, the Argo CD health check and the Dockerfiles."""

from __future__ import annotations

import re

import helm_python as helm
import kubernetes_validate
import lupa
import pytest
import yaml

from modelops.deployment.schema import crd
from modelops_operator.builders import build_cluster_serving_runtime

from .schemas import REPO_ROOT, kserve_schema, load_crd, schema_errors

MANIFESTS = REPO_ROOT / "manifests"
CHART = REPO_ROOT / "helm/modelops"
K8S_VERSIONS = ["1.25", "1.37"]
KSERVE_KINDS = {"ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
                "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
                "InferenceService": "serving.kserve.io_inferenceservices.yaml"}


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate_object(doc: dict) -> None:
    """Built-in kinds against the Kubernetes OpenAPI; KServe kinds against KServe's CRDs."""
    if doc["kind"] in KSERVE_KINDS:
        version = doc["apiVersion"].split("/")[1]
        assert schema_errors(doc, kserve_schema(KSERVE_KINDS[doc["kind"]], version)) == []
    elif doc["kind"] != "ModelDeployment":
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_install_manifests_validate():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    kinds = []
    for rel in kustomization["resources"]:
        for doc in docs((MANIFESTS / rel).read_text()):
            validate_object(doc)
            kinds.append(doc["kind"])
    assert sorted(set(kinds)) == sorted({"CustomResourceDefinition", "Namespace", "ServiceAccount",
                                         "ClusterRole", "ClusterRoleBinding", "Deployment",
                                         "ClusterServingRuntime"})


def test_manifest_runtime_is_generated_from_the_builder():
    (doc,) = docs((MANIFESTS / "runtime/clusterservingruntime.yaml").read_text())
    assert doc == build_cluster_serving_runtime()


def test_rbac_grants_what_the_operator_uses():
    rules = [d for d in docs((MANIFESTS / "install/rbac.yaml").read_text()) if d["kind"] == "ClusterRole"][0]["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for need in [("modelops.dev", "modeldeployments", "watch"), ("modelops.dev", "modeldeployments/status", "patch"),
                 ("serving.kserve.io", "inferenceservices", "create"),
                 ("serving.kserve.io", "inferenceservices", "patch"), ("batch", "jobs", "create"),
                 ("", "events", "create"), ("", "pods", "list")]:
        assert need in granted, need


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(name="modelops", namespace="modelops-system", is_install=True)
    return [d for name, text in sorted(out.items()) if name.endswith(".yaml") for d in docs(text)]


def test_helm_chart_lints_clean():
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == [] and report["messages"] == [], report


def test_helm_chart_renders_valid_objects(rendered):
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime", "Deployment", "ServiceAccount"]
    for doc in rendered:
        validate_object(doc)


def test_helm_chart_carries_the_same_crd_and_runtime(rendered):
    chart = helm.Chart.load(str(CHART))
    (crd_file,) = chart.crds
    assert yaml.safe_load(crd_file["data"]) == crd()
    runtime = next(d for d in rendered if d["kind"] == "ClusterServingRuntime")
    assert runtime == build_cluster_serving_runtime()


def test_helm_values_reach_the_operator():
    chart = helm.Chart.load(str(CHART))
    out = chart.render({"operator": {"namespaces": ["team-a", "team-b"], "conversion": "inprocess",
                                     "resolveInterval": 15,
                                     "storageUriRewrites": ["mlflow-artifacts:/=s3://b/"]},
                        "runtime": {"create": False}}, name="mo", namespace="ops")
    dep = next(d for n, t in out.items() if n.endswith(".yaml") for d in docs(t) if d["kind"] == "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["operator", "--namespace", "team-a", "--namespace", "team-b",
                         "--conversion", "inprocess", "--resolve-interval", "15"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MODELOPS_STORAGE_URI_REWRITES"] == "mlflow-artifacts:/=s3://b/"
    assert not any(d["kind"] == "ClusterServingRuntime" for n, t in out.items() if n.endswith(".yaml") for d in docs(t))


# --- Argo CD health check (the Lua runs in an embedded Lua interpreter) ------------------------
def argocd_health(obj: dict) -> dict:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    def to_lua(value):
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value
    script = (MANIFESTS / "argocd/health.lua").read_text()
    fn = lua.eval("function(obj) " + script + " end")
    result = fn(to_lua(obj))
    return {"status": result["status"], "message": result["message"]}


def _md(generation=1, **status):
    return {"metadata": {"name": "m", "generation": generation}, **({"status": status} if status else {})}


def test_argocd_health_check():
    conds = lambda ready, stalled="False": [  # noqa: E731
        {"type": "Ready", "status": ready, "message": "serving m v1"},
        {"type": "Stalled", "status": stalled, "reason": "ParityFailed", "message": "too far"},
        {"type": "Reconciling", "status": "True" if ready == "False" else "False", "message": "converting m v1"}]
    assert argocd_health(_md())["status"] == "Progressing"
    assert argocd_health(_md(2, observedGeneration=1, phase="Ready", conditions=conds("True")))["status"] == "Progressing"
    assert argocd_health(_md(1, observedGeneration=1, phase="Ready", conditions=conds("True"))) == \
        {"status": "Healthy", "message": "serving m v1"}
    degraded = argocd_health(_md(1, observedGeneration=1, phase="Failed", conditions=conds("False", "True")))
    assert degraded == {"status": "Degraded", "message": "ParityFailed: too far"}
    progressing = argocd_health(_md(1, observedGeneration=1, phase="Converting", conditions=conds("False")))
    assert progressing == {"status": "Progressing", "message": "converting m v1"}


def test_argocd_configmap_carries_the_same_script():
    cm = yaml.safe_load((MANIFESTS / "argocd/argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.modelops.dev_ModelDeployment"] == \
        (MANIFESTS / "argocd/health.lua").read_text()


# --- Dockerfiles (statically) -----------------------------------------------------------------
@pytest.mark.parametrize("name,entry", [("operator", "operator"), ("converter", "convert"),
                                        ("predictor", "serve")])
def test_dockerfiles(name, entry):
    text = (REPO_ROOT / f"docker/{name}.Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    instructions = [l.split()[0].upper() for l in lines if re.match(r"^[A-Za-z]+\s", l)]
    assert instructions[0] == "FROM"
    users = [l.split()[1] for l in lines if l.upper().startswith("USER ")]
    assert users and users[-1] == "10001"  # non-root, matching runAsUser in the manifests
    assert 'ENTRYPOINT ["modelops"]' in text
    cmd = next(l for l in lines if l.startswith("CMD"))
    assert f'"{entry}"' in cmd
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (REPO_ROOT / copied).exists(), copied
    if name == "predictor":
        assert "onnxruntime-gpu" in text
