"""Static checks of the Helm chart, manifests/ (rendered from it), the GitOps health checks and
the Dockerfiles. What needs an API server (install, admission, RBAC) is in tests/helm/."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import celpy
import helm_python as helm
import kubernetes_validate
import lupa
import pytest
import yaml

from modelops.deployment.crd import crd
from modelops.deployment.spec import parse_spec
from modelops_operator import builders
from modelops_operator.builders import build_cluster_serving_runtime

from .schemas import REPO_ROOT, kserve_schema, schema_errors

MANIFESTS = REPO_ROOT / "manifests"
CHART = REPO_ROOT / "helm/modelops"
EXAMPLES = REPO_ROOT / "helm/examples"
K8S_VERSIONS = ["1.25", "1.37"]
KSERVE_KINDS = {"ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
                "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
                "InferenceService": "serving.kserve.io_inferenceservices.yaml"}
# Kinds whose CRDs are not on this machine: checked field by field below instead.
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import render_manifests  # noqa: E402


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate_object(doc: dict) -> None:
    """Built-in kinds against the Kubernetes OpenAPI; KServe kinds against KServe's CRDs."""
    if doc["kind"] in KSERVE_KINDS:
        version = doc["apiVersion"].split("/")[1]
        assert schema_errors(doc, kserve_schema(KSERVE_KINDS[doc["kind"]], version)) == []
    elif doc["kind"] not in PROMETHEUS_OPERATOR_KINDS | {"ModelDeployment"}:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def example_values(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"values-{name}.yaml").read_text())


def render(values: dict | None = None, namespace: str = "modelops-system") -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values, name="modelops", namespace=namespace, is_install=True)
    return [d for name, text in sorted(out.items()) if name.endswith(".yaml") for d in docs(text)]


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def operator_container(objs: list[dict]) -> dict:
    (dep,) = of_kind(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


VALUE_SETS = {"default": {}, "namespaced": example_values("namespaced"), "gpu": example_values("gpu"),
              "ha": example_values("ha"),
              "everything": {**example_values("ha"), **example_values("namespaced"),
                             "mlflow": {"credentialsSecret": "mlflow-creds"},
                             "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"],
                                               "extraEgress": [{"ports": [{"port": 5000}]}]}}}


# --- the chart ---------------------------------------------------------------------------------
@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_chart_lints_clean_and_renders_valid_objects(values):
    report = helm.lint(str(CHART), VALUE_SETS[values], strict=True)
    assert report["errors"] == [] and report["messages"] == [], report
    objs = render(VALUE_SETS[values])
    for doc in objs:
        validate_object(doc)
    assert len({(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}) == len(objs)


def test_default_render():
    objs = render()
    assert sorted(o["kind"] for o in objs) == sorted([
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding", "Service", "Deployment", "ClusterServingRuntime"])
    (dep,) = of_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    c = operator_container(objs)
    # Image tags default to the chart's appVersion, which is the package version.
    app_version = helm.Chart.load(str(CHART)).metadata["appVersion"]
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(app_version)}"$', pyproject, re.M)
    assert c["image"] == f"ghcr.io/modelops/modelops-operator:{app_version}"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["MODELOPS_CONVERTER_IMAGE"] == f"ghcr.io/modelops/modelops-converter:{app_version}"
    assert (of_kind(objs, "ClusterServingRuntime")[0]["spec"]["containers"][0]["image"]
            == f"ghcr.io/modelops/modelops-predictor:{app_version}")
    assert env["MODELOPS_LEADER_ELECT"] == "true"
    assert env["MODELOPS_LEADER_ELECT_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MODELOPS_METRICS_ADDRESS"] == "0.0.0.0:8080" and env["MODELOPS_LIVENESS"] == ""
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics"
    assert not of_kind(objs, "PodDisruptionBudget")  # one replica: nothing to keep


def test_values_reach_the_operator():
    objs = render({"operator": {"namespaces": ["team-a", "team-b"], "conversion": "inprocess",
                                "resolveInterval": 15, "verbose": True},
                   "mlflow": {"trackingUri": "https://mlflow.example.com", "credentialsSecret": "mlflow-creds",
                              "storageUriRewrites": ["mlflow-artifacts:/=s3://b/"]},
                   "prometheus": {"url": "http://prometheus.monitoring:9090"},
                   "converter": {"serviceAccountName": "conv", "deadlineSeconds": 600,
                                 "resources": {"requests": {"cpu": "2"}}},
                   "image": {"operator": {"repository": "r.example/op", "tag": "9.9.9"},
                             "converter": {"repository": "r.example/conv",
                                           "digest": "sha256:" + "a" * 64}},
                   "runtime": {"create": False}})
    c = operator_container(objs)
    assert c["args"] == ["operator", "--namespace", "team-a", "--namespace", "team-b",
                         "--conversion", "inprocess", "--resolve-interval", "15", "--verbose"]
    assert c["image"] == "r.example/op:9.9.9"
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-creds"}}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MODELOPS_MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert env["MODELOPS_STORAGE_URI_REWRITES"] == "mlflow-artifacts:/=s3://b/"
    assert env["MODELOPS_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    assert env["MODELOPS_CONVERTER_IMAGE"] == "r.example/conv@sha256:" + "a" * 64
    assert env["MODELOPS_CONVERTER_SERVICE_ACCOUNT"] == "conv"
    assert env["MODELOPS_CONVERTER_DEADLINE_SECONDS"] == "600"
    # Helm merges maps with the defaults.
    assert yaml.safe_load(env["MODELOPS_CONVERTER_RESOURCES"]) == {"requests": {"cpu": "2", "memory": "2Gi"},
                                                                   "limits": {"memory": "8Gi"}}
    assert not of_kind(objs, "ClusterServingRuntime")


@pytest.mark.parametrize("values,message", [
    ({"replicaCont": 2}, "replicaCont"),                                    # misspelt top-level key
    ({"operator": {"namespace": ["a"]}}, "namespace"),                      # misspelt nested key
    ({"replicaCount": "2"}, "replicaCount"),                                # wrong type
    ({"operator": {"leaderElection": {"enabled": "yes"}}}, "enabled"),     # wrong type
    ({"operator": {"conversion": "sometimes"}}, "conversion"),             # not in the enum
    ({"operator": {"namespaces": ["Not_A_Namespace"]}}, "namespaces"),     # not a DNS label
    ({"image": {"operator": {"repository": "x", "digest": "latest"}}}, "digest"),
    ({"mlflow": {"trackingUri": "mlflow:5000"}}, "trackingUri"),
])
def test_values_schema_rejects_mistakes(values, message):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as err:
        chart.render(values, name="modelops", namespace="modelops-system")
    assert message in str(err.value)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_values_schema_accepts_every_example_and_the_defaults():
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(chart.values)
    for name in ("gpu", "namespaced", "ha"):
        chart.validate_schema(example_values(name))


def test_two_replicas_need_leader_election():
    with pytest.raises(helm.HelmError, match="leaderElection"):
        render({"replicaCount": 2, "operator": {"leaderElection": {"enabled": False}}})
    objs = render({"replicaCount": 1, "operator": {"leaderElection": {"enabled": False}}})
    (dep,) = of_kind(objs, "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(o["kind"] == "Role" and "leader" in o["metadata"]["name"] for o in objs)


def test_ha_values_add_a_pdb_monitoring_and_spread():
    objs = render(example_values("ha"))
    (dep,) = of_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    (pdb,) = of_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (svc,) = of_kind(objs, "Service")
    (sm,) = of_kind(objs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    (rule,) = of_kind(objs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"ModelOpsOperatorDown", "ModelOpsReconcileErrors", "ModelOpsRolloutFailed"}
    # The alerts use the metrics the operator exports (modelops_operator.metrics).
    from modelops_operator import metrics
    exported = {m.name for m in metrics.REGISTRY.collect()}
    for alert in alerts.values():
        for name in re.findall(r"modelops_operator_\w+", alert["expr"]):
            assert name.removesuffix("_total") in exported, (alert["alert"], name)
    assert f'job="{svc["metadata"]["name"]}"' in alerts["ModelOpsReconcileErrors"]["expr"]


def test_namespaced_rbac_is_least_privilege():
    objs = render(example_values("namespaced"))
    namespaces = example_values("namespaced")["operator"]["namespaces"]
    cluster_rules = [r for o in of_kind(objs, "ClusterRole") for r in o["rules"]]
    # Cluster-wide: only reading CRDs and listing Namespaces (cluster-scoped kinds; Kopf's discovery).
    assert granted(cluster_rules) == {("apiextensions.k8s.io", "customresourcedefinitions", v)
                                      for v in ("list", "watch")} | {("", "namespaces", v)
                                                                            for v in ("list", "watch")}
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in of_kind(objs, "Role")}
    bindings = of_kind(objs, "RoleBinding")
    for ns in namespaces:
        rules = granted(roles[(ns, "modelops-operator")]["rules"])
        assert ("", "secrets", "get") not in rules and not any(r[1] == "secrets" for r in rules)
        assert ("modelops.dev", "modeldeployments", "watch") in rules
        assert any(b["metadata"]["namespace"] == ns and b["roleRef"]["name"] == "modelops-operator"
                   for b in bindings)
    lease = roles[("modelops-system", "modelops-operator-leader-election")]
    assert granted(lease["rules"]) == {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update")}
    assert {tuple(r.get("resourceNames", [])) for r in lease["rules"]} == {(), ("modelops-operator",)}
    # Converter accounts in the watched namespaces, never mounting their token.
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in of_kind(objs, "ServiceAccount")}
    for ns in namespaces:
        assert accounts[(ns, "modelops-converter")]["automountServiceAccountToken"] is False


def test_rbac_grants_what_the_operator_uses():
    # (Each rule proven needed on the real API server: scripts/rbac_rules_needed.py.)
    need = [("modelops.dev", "modeldeployments", "watch"), ("modelops.dev", "modeldeployments/status", "patch"),
            ("modelops.dev", "modeldeployments/finalizers", "update"),
            ("serving.kserve.io", "inferenceservices", "create"), ("serving.kserve.io", "inferenceservices", "patch"),
            ("batch", "jobs", "create"), ("batch", "jobs", "delete"), ("", "events", "create"), ("", "pods", "list")]
    for values, kind in (({}, "ClusterRole"), (example_values("namespaced"), "Role")):
        rules = [r for o in of_kind(render(values), kind) for r in o["rules"]]
        for n in need:
            assert n in granted(rules), (kind, n)


def test_crd_is_the_same_in_code_chart_and_manifests():
    (chart_crd,) = of_kind(render(), "CustomResourceDefinition")
    source = crd()
    assert chart_crd["spec"] == source["spec"]
    assert chart_crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= chart_crd["metadata"]["labels"].items()
    assert chart_crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (manifest_crd,) = docs((MANIFESTS / "crds/modeldeployments.modelops.dev.yaml").read_text())
    assert manifest_crd == source
    (install_crd,) = of_kind(docs((MANIFESTS / "install.yaml").read_text()), "CustomResourceDefinition")
    assert install_crd["spec"] == source["spec"]
    assert not (CHART / "crds").exists()  # Helm never upgrades crds/: the CRD is a template
    assert not of_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")
    (unkept,) = of_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (unkept["metadata"].get("annotations") or {})


def test_runtime_is_the_builders():
    (runtime,) = of_kind(render(), "ClusterServingRuntime")
    assert runtime == build_cluster_serving_runtime()
    (gpu,) = of_kind(render(example_values("gpu")), "ClusterServingRuntime")
    assert gpu["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# --- Pod Security `restricted`, statically (tests/helm/ proves it with real admission) ----------
def restricted_violations(pod_spec: dict) -> list[str]:
    """The restricted Pod Security Standard's checks (v1.25+) on a Pod spec."""
    out = []
    pod_sc = pod_spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            out.append(key)
    for vol in pod_spec.get("volumes") or []:
        if not set(vol) - {"name"} <= {"emptyDir", "configMap", "secret", "projected", "downwardAPI",
                                       "persistentVolumeClaim", "ephemeral", "csi"}:
            out.append(f"volume {vol['name']}")
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            out.append(f"{c['name']}: capabilities.drop ALL")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{c['name']}: capabilities.add")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            out.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{c['name']}: runAsUser 0")
        if (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccompProfile")
        if sc.get("privileged") or any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{c['name']}: privileged/hostPort")
    return out


def test_every_pod_template_meets_restricted():
    for values in VALUE_SETS.values():
        (dep,) = of_kind(render(values), "Deployment")
        assert restricted_violations(dep["spec"]["template"]["spec"]) == []
        for runtime in of_kind(render(values), "ClusterServingRuntime"):
            assert restricted_violations({"containers": runtime["spec"]["containers"]}) == []
    md = {"metadata": {"name": "m", "namespace": "ml", "uid": "u", "generation": 1}}
    spec = parse_spec({"model": {"name": "m", "version": "1"}, "registry": {"credentialsSecret": "creds"}})
    job = builders.build_conversion_job(md, spec, "1", tracking_uri="http://mlflow:5000", image="i",
                                        service_account="conv")
    assert restricted_violations(job["spec"]["template"]["spec"]) == []
    validate_object(job)


# --- manifests/ rendered from the chart --------------------------------------------------------
def test_manifests_are_rendered_from_the_chart():
    check = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/render_manifests.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    install = docs((MANIFESTS / "install.yaml").read_text())
    assert install[0]["kind"] == "Namespace"
    assert install[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert install[1:] == render_manifests.render()
    for doc in install:
        validate_object(doc)


def keyed(objs: list[dict]) -> dict:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs}


def kustomize(path) -> list[dict]:
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return docs(proc.stdout)


@pytest.mark.parametrize("overlay", [None, "namespaced", "gpu"])
def test_kustomize_base_and_overlays_equal_the_chart(overlay):
    built = keyed(kustomize(MANIFESTS if overlay is None else MANIFESTS / "overlays" / overlay))
    expected = keyed([render_manifests.namespace_object()] + render(example_values(overlay) if overlay else None))
    # The kustomize base takes the CRD from manifests/crds/ (the generator's output, no Helm labels).
    expected[("CustomResourceDefinition", "", "modeldeployments.modelops.dev")] = crd()
    assert built.keys() == expected.keys()
    for k, obj in expected.items():
        assert built[k] == obj, k
    for doc in built.values():
        validate_object(doc)


# --- the examples --------------------------------------------------------------------------------
def test_examples_parse():
    for path in sorted((MANIFESTS / "examples").glob("*.yaml")):
        for doc in docs(path.read_text()):
            assert doc["kind"] == "ModelDeployment"
            parse_spec(doc["spec"])


# --- GitOps health: Argo CD (Lua) and Flux (CEL) agree --------------------------------------------
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


def flux_health(obj: dict) -> str:
    """kustomize-controller's healthCheckExprs: inProgress, then failed, then current; else InProgress.

    The object's top-level fields are the CEL variables; an evaluation error counts as not true."""
    (ks,) = docs((MANIFESTS / "flux/kustomization-models.yaml").read_text())
    (check,) = [c for c in ks["spec"]["healthCheckExprs"] if c["kind"] == "ModelDeployment"]
    assert check["apiVersion"] == "modelops.dev/v1alpha1"
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    for field, status in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        result = env.program(env.compile(check[field])).evaluate(activation)
        if isinstance(result, celpy.CELEvalError):
            continue
        if bool(result):
            return status
    return "InProgress"


def _md(generation=1, **status):
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "generation": generation}, "spec": {"model": {"name": "m"}},
            **({"status": status} if status else {})}


def _conds(ready, stalled="False"):
    return [{"type": "Ready", "status": ready, "message": "serving m v1"},
            {"type": "Stalled", "status": stalled, "reason": "ParityFailed", "message": "too far"},
            {"type": "Reconciling", "status": "True" if ready == "False" and stalled == "False" else "False",
             "message": "converting m v1"}]


HEALTH_CASES = [
    (_md(), "Progressing", "InProgress"),
    (_md(2, observedGeneration=1, phase="Ready", conditions=_conds("True")), "Progressing", "InProgress"),
    (_md(1, observedGeneration=1, phase="Ready", conditions=_conds("True")), "Healthy", "Current"),
    (_md(1, observedGeneration=1, phase="Failed", conditions=_conds("False", "True")), "Degraded", "Failed"),
    (_md(1, observedGeneration=1, phase="RolledBack", conditions=_conds("True")), "Degraded", "Failed"),
    (_md(1, observedGeneration=1, phase="Converting", conditions=_conds("False")), "Progressing", "InProgress"),
    (_md(1, observedGeneration=1, phase="Pending"), "Progressing", "InProgress"),
    # a canary: the stable serves (Ready=True) while the new version is analysed step by step
    (_md(1, observedGeneration=1, phase="Progressing",
         conditions=[{"type": "Ready", "status": "True", "message": "serving m v1, canary v2 at 10%"},
                     {"type": "Stalled", "status": "False"},
                     {"type": "Reconciling", "status": "True", "message": "canary v2 at 10% (step 1/3)"}]),
     "Progressing", "InProgress"),
]


@pytest.mark.parametrize("obj,argo,flux", HEALTH_CASES)
def test_gitops_health_checks_agree(obj, argo, flux):
    assert argocd_health(obj)["status"] == argo
    assert flux_health(obj) == flux


def test_argocd_health_messages():
    assert argocd_health(HEALTH_CASES[2][0]) == {"status": "Healthy", "message": "serving m v1"}
    assert argocd_health(HEALTH_CASES[3][0]) == {"status": "Degraded", "message": "ParityFailed: too far"}
    assert argocd_health(HEALTH_CASES[5][0]) == {"status": "Progressing", "message": "converting m v1"}
    assert argocd_health(HEALTH_CASES[7][0]) == {"status": "Progressing", "message": "canary v2 at 10% (step 1/3)"}


def test_argocd_configmap_carries_the_same_script():
    cm = yaml.safe_load((MANIFESTS / "argocd/argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.modelops.dev_ModelDeployment"] == \
        (MANIFESTS / "argocd/health.lua").read_text()


# --- Dockerfiles -------------------------------------------------------------------------------
def dockerfile(name: str) -> tuple[str, list[str]]:
    text = (REPO_ROOT / f"docker/{name}.Dockerfile").read_text()
    lines = [l.strip() for l in text.replace("\\\n", " ").splitlines() if l.strip() and not l.strip().startswith("#")]
    return text, lines


def exec_form(lines: list[str], instruction: str) -> list[str]:
    (line,) = [l for l in lines if l.startswith(instruction + " ")][-1:]
    return yaml.safe_load(line[len(instruction):])


@pytest.mark.parametrize("name", ["operator", "converter", "predictor"])
def test_dockerfiles_are_pinned_and_non_root(name):
    text, lines = dockerfile(name)
    froms = [l.split()[1] for l in lines if l.startswith("FROM ")]
    for image in froms:
        # An exact version or a digest: never `latest` nor a bare minor version.
        assert re.search(r":\d+\.\d+\.\d+[-\w.]*(@sha256:[0-9a-f]{64})?$|@sha256:[0-9a-f]{64}$", image), image
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert users and users[-1] == "10001"  # non-root, matching runAsUser in the chart
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for src in copied.split():
            assert (REPO_ROOT / src).exists(), src
    installs = [cmd.strip() for l in lines if l.startswith("RUN ") for cmd in l[4:].split("&&")
                if "pip install" in cmd]
    assert installs and all("-c docker/constraints.txt" in cmd for cmd in installs), installs
    if name == "predictor":
        assert "onnxruntime-gpu" in text


def test_constraints_pin_every_runtime_dependency():
    pins = {}
    for line in (REPO_ROOT / "docker/constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, line
            pins[name.lower().replace("_", "-")] = version
    for needed in ("kserve", "onnxruntime", "onnxruntime-gpu", "mlflow", "kopf", "kubernetes", "torch",
                   "skl2onnx", "scikit-learn", "numpy", "prometheus-client", "onnx", "tokenizers",
                   "transformers", "sentence-transformers"):
        assert needed in pins, needed


def _run_cli(argv: list[str]) -> None:
    """Parse `modelops ARGV` with the real parsers (no server starts)."""
    from modelops import cli

    if argv[0] == "operator":
        from modelops_operator.main import parse_args
        parse_args(argv[1:])
    else:
        cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("name,sub", [("operator", "operator"), ("converter", "convert"), ("predictor", "serve")])
def test_dockerfile_entrypoints_are_valid_commands(name, sub):
    _, lines = dockerfile(name)
    assert exec_form(lines, "ENTRYPOINT") == ["modelops"]
    cmd = exec_form(lines, "CMD")
    assert cmd[0] == sub
    if cmd[-1] != "--help":
        _run_cli(cmd)
    # The installed console script runs that subcommand (what the image's ENTRYPOINT starts).
    help_ = subprocess.run([sys.executable, "-m", "modelops.cli", sub, "--help"], capture_output=True,
                           text=True, timeout=120)
    assert help_.returncode == 0 and "usage: modelops" in help_.stdout, help_.stderr


def test_commands_the_cluster_runs_are_valid():
    """The operator Deployment's args, the runtime's args and a conversion Job's args parse."""
    for values in VALUE_SETS.values():
        c = operator_container(render(values))
        assert c["command"] == ["modelops"]
        _run_cli(c["args"])
    (runtime,) = of_kind(render(), "ClusterServingRuntime")
    (rc,) = runtime["spec"]["containers"]
    _run_cli([a.replace("{{.Name}}", "fraud") for a in rc["args"]])
    md = {"metadata": {"name": "m", "namespace": "ml", "uid": "u", "generation": 1}}
    spec = parse_spec({"model": {"name": "m", "version": "1"},
                       "conversion": {"precision": "fp16", "tolerance": {"rtol": 0.01}}})
    job = builders.build_conversion_job(md, spec, "1", tracking_uri="http://mlflow:5000", image="i")
    (jc,) = job["spec"]["template"]["spec"]["containers"]
    _run_cli(jc["args"])


def test_build_images_script():
    script = (REPO_ROOT / "scripts/build-images.sh").read_text()
    syntax = subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts/build-images.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    for name in ("operator", "converter", "predictor"):
        assert f"docker/{name}.Dockerfile" in script or "docker/${name}.Dockerfile" in script
    dry = subprocess.run(["bash", str(REPO_ROOT / "scripts/build-images.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    app_version = helm.Chart.load(str(CHART)).metadata["appVersion"]
    for name in ("operator", "converter", "predictor"):
        assert f"ghcr.io/modelops/modelops-{name}:{app_version}" in dry.stdout


@pytest.mark.parametrize("base", ["cluster", "namespaced"])
def test_predictor_access_adds_only_what_it_needs(base):
    values = copy.deepcopy(example_values("namespaced")) if base == "namespaced" else {}
    values["predictorAccess"] = {"enabled": True, "defaultAuth": "kubernetes",
                                 "scraperPeer": {"namespaceSelector": {"matchLabels": {"team": "obs"}}}}
    objs = render(values)
    for doc in objs:
        validate_object(doc)
    (binding,) = [o for o in of_kind(objs, "ClusterRoleBinding") if o["metadata"]["name"] == "modelops-predictor-auth"]
    assert binding["roleRef"]["name"] == "system:auth-delegator" and "subjects" not in binding  # Helm leaves them
    (role,) = [o for o in of_kind(objs, "ClusterRole") if o["metadata"]["name"] == "modelops-operator-predictor-access"]
    assert {(tuple(r["resources"]), tuple(r["verbs"]), tuple(r["resourceNames"])) for r in role["rules"]} == {
        (("clusterrolebindings",), ("get", "patch"), ("modelops-predictor-auth",)),
        (("clusterroles",), ("bind",), ("system:auth-delegator",))}
    kind = "Role" if base == "namespaced" else "ClusterRole"
    rules = granted([r for o in of_kind(objs, kind) if o["metadata"]["name"] == "modelops-operator"
                     for r in o["rules"]])
    assert {("", "serviceaccounts", "create"), ("networking.k8s.io", "networkpolicies", "delete")} <= rules
    env = {e["name"]: e.get("value") for e in operator_container(objs)["env"]}
    assert env["MODELOPS_PREDICTOR_ACCESS"] == "true" and env["MODELOPS_PREDICTOR_AUTH"] == "kubernetes"
    assert env["MODELOPS_PREDICTOR_AUTH_BINDING"] == "modelops-predictor-auth"
    assert env["MODELOPS_PREDICTOR_SCRAPER_PEER"] == '{"namespaceSelector":{"matchLabels":{"team":"obs"}}}'
    # Off (the default): none of it.
    plain = render({})
    assert not [o for o in of_kind(plain, "ClusterRoleBinding") if "predictor" in o["metadata"]["name"]]
    assert not any(r[1] in ("serviceaccounts", "networkpolicies") for o in of_kind(plain, "ClusterRole")
                   for r in granted(o["rules"]))
