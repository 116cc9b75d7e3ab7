"""The chart on a real Kubernetes control plane (../shared/k8s): install, admission, RBAC, upgrade, uninstall.

Every release goes into namespaces that enforce Pod Security `restricted`. There is no kubelet or
scheduler: Pods stay Pending, but the real controllers create them and real admission decides.
The tests run in file order: the default release owns the cluster-wide objects (CRD, runtime)
that the others leave out; upgrade and uninstall come last.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml

from modelops.deployment.spec import parse_spec
from modelops_operator import builders
from modelops_operator.builders import build_inference_service
from modelops.deployment.facts import Served

from .conftest import CHART, CRD_NAME, RUNTIME_NAME, example_values

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Release:
    def __init__(self, cluster, name: str, namespace: str, values: dict):
        self.cluster, self.name, self.namespace, self.values = cluster, name, namespace, values
        self.sa = f"system:serviceaccount:{namespace}:{name}-operator"

    def install(self):
        import helm_python as helm

        return self.cluster.helm(self.namespace).install(helm.Chart.load(str(CHART)), self.name, self.values,
                                                         namespace=self.namespace, timeout=120)


def wait_operator_pods(cluster, release: Release, replicas: int) -> list[dict]:
    """The Deployment's ReplicaSet created `replicas` Pods (admitted), and refused none."""
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator"

    def pods():
        sets = cluster.items("replicasets", "-n", release.namespace, "-l", selector)
        for rs in sets:
            refused = [e for e in cluster.events(release.namespace, rs["metadata"]["name"])
                       if e["reason"] == "FailedCreate"]
            assert not refused, refused[0]["message"]
        found = cluster.items("pods", "-n", release.namespace, "-l", selector)
        return found if len(found) == replicas else None

    found = cluster.wait_for(pods, what=f"{replicas} operator Pods of {release.name}")
    for pod in found:
        assert pod["status"]["phase"] == "Pending"  # no kubelet: created and admitted, never run
    return found


def assert_refused_in(cluster, namespace: str) -> None:
    """Control: the namespace really enforces `restricted` (a plain Pod is refused)."""
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    proc = cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(bare), check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def default_release(cluster) -> Release:
    ns = cluster.restricted_namespace(f"modelops-{cluster.suffix}")
    release = Release(cluster, f"mo-{cluster.suffix}", ns, {"replicaCount": 2})
    cluster.adopt("crd", CRD_NAME, release.name, ns)
    cluster.adopt("clusterservingruntime", RUNTIME_NAME, release.name, ns)
    cluster.cp.wait_established("clusterservingruntimes.serving.kserve.io")
    rel = release.install()
    assert rel["status"] == "deployed"
    return release


@pytest.fixture(scope="module")
def namespaced_release(cluster, default_release) -> Release:
    values = example_values("namespaced")
    values["operator"]["namespaces"] = [cluster.restricted_namespace(f"{n}-{cluster.suffix}")
                                        for n in values["operator"]["namespaces"]]
    # The cluster-wide singletons belong to the default release.
    values.update(crds={"install": False}, runtime={"create": False})
    release = Release(cluster, f"mo-ns-{cluster.suffix}", cluster.restricted_namespace(f"modelops-ns-{cluster.suffix}"),
                      values)
    release.install()
    return release


def test_default_install_pods_are_admitted(cluster, default_release):
    assert_refused_in(cluster, default_release.namespace)
    wait_operator_pods(cluster, default_release, 2)
    assert cluster.get("crd", CRD_NAME)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pdb = cluster.get("pdb", f"{default_release.name}-operator", "-n", default_release.namespace)
    assert pdb["spec"]["minAvailable"] == 1
    runtime = cluster.get("clusterservingruntime", RUNTIME_NAME)
    (c,) = runtime["spec"]["containers"]
    assert c["securityContext"]["runAsNonRoot"] is True


def test_namespaced_install_pods_are_admitted(cluster, namespaced_release):
    wait_operator_pods(cluster, namespaced_release, 1)
    name = f"{namespaced_release.name}-operator"
    for ns in namespaced_release.values["operator"]["namespaces"]:
        assert cluster.get("role", name, "-n", ns) is not None
        sa = cluster.get("serviceaccount", "modelops-converter", "-n", ns)
        assert sa["automountServiceAccountToken"] is False
    assert cluster.get("clusterrole", name) is None
    assert cluster.get("clusterrole", f"{name}-discovery")["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]


def test_gpu_install_and_a_gpu_predictor_pod_are_admitted(cluster, default_release):
    values = example_values("gpu")
    runtime_name = f"{RUNTIME_NAME}-gpu-{cluster.suffix}"
    values["runtime"]["name"] = runtime_name
    values["crds"] = {"install": False}
    release = Release(cluster, f"mo-gpu-{cluster.suffix}", cluster.restricted_namespace(f"modelops-gpu-{cluster.suffix}"),
                      values)
    release.install()
    wait_operator_pods(cluster, release, 1)
    runtime = cluster.get("clusterservingruntime", runtime_name)
    assert runtime["spec"]["tolerations"] == values["runtime"]["tolerations"]

    # KServe is absent: build the predictor Pod as it would, from the runtime and a GPU
    # InferenceService the operator builds, and let admission judge it.
    ns = cluster.restricted_namespace(f"ml-gpu-{cluster.suffix}")
    md = {"metadata": {"name": "fraud", "namespace": ns, "uid": "u", "generation": 1}}
    spec = parse_spec({"model": {"name": "fraud", "version": "1"},
                       "predictor": {"gpu": 1, "tolerations": values["runtime"]["tolerations"]}})
    isvc = build_inference_service(md, spec, Served("1", "s3://m/1", "s3://m/1", "0" * 64, "x"),
                                   runtime=runtime_name)
    model = isvc["spec"]["predictor"]["model"]
    (container,) = copy.deepcopy(runtime["spec"]["containers"])
    container["args"] = [a.replace("{{.Name}}", "fraud") for a in container["args"]]
    container["resources"] = model["resources"]
    container["env"] = model["env"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "fraud-predictor", "namespace": ns},
           "spec": {"containers": [container], "tolerations": isvc["spec"]["predictor"]["tolerations"]
                    + runtime["spec"]["tolerations"], "automountServiceAccountToken": False}}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(pod))
    created = cluster.get("pod", "fraud-predictor", "-n", ns)
    assert created["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert_refused_in(cluster, ns)


def test_converter_job_pod_is_admitted(cluster, default_release):
    ns = cluster.restricted_namespace(f"ml-convert-{cluster.suffix}")
    md = {"metadata": {"name": "fraud", "namespace": ns, "uid": "u", "generation": 1}}
    spec = parse_spec({"model": {"name": "fraud", "version": "3"}, "registry": {"credentialsSecret": "mlflow"}})
    job = builders.build_conversion_job(md, spec, "3", tracking_uri="http://mlflow:5000",
                                        image="ghcr.io/modelops/modelops-converter:0.1.0")
    del job["metadata"]["ownerReferences"]  # no real owner here (GC would delete the Job)
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(job))
    name = job["metadata"]["name"]

    def pod():
        refused = [e for e in cluster.events(ns, name) if e["reason"] == "FailedCreate"]
        assert not refused, refused[0]["message"]
        return cluster.items("pods", "-n", ns, "-l", f"job-name={name}")

    (created,) = cluster.wait_for(pod, what="the converter Job's Pod")
    assert created["spec"]["automountServiceAccountToken"] is False
    assert_refused_in(cluster, ns)


def test_least_privilege_cluster_wide(cluster, default_release):
    r = default_release
    other = cluster.restricted_namespace(f"ml-other-{cluster.suffix}")
    can = lambda verb, res, ns, sub=None: cluster.can_i(verb, res, namespace=ns, user=r.sa, subresource=sub)  # noqa: E731
    lease = f"leases.coordination.k8s.io/{r.name}-operator"
    # What it needs.
    assert can("watch", "modeldeployments.modelops.dev", None)
    assert can("patch", "modeldeployments.modelops.dev", other, "status")
    assert can("create", "inferenceservices.serving.kserve.io", other)
    assert can("create", "jobs.batch", other)
    assert can("create", "events", other)
    assert can("update", lease, r.namespace) and can("create", "leases.coordination.k8s.io", r.namespace)
    # Judging the model: the mirror ConfigMap and the candidate/stable Services (get, create, patch only)
    for res in ("configmaps", "services"):
        assert can("patch", res, other) and not can("delete", res, other) and not can("list", res, other)
    # Nothing more: no Secrets (not even its own namespace's), no other resource types.
    for ns in (None, r.namespace, other, "kube-system"):
        assert not can("get", "secrets", ns) and not can("list", "secrets", ns)
    for verb, res, ns in [("create", "pods", other), ("create", "deployments.apps", other),
                          ("delete", "customresourcedefinitions", None), ("watch", "configmaps", other),
                          ("update", "clusterservingruntimes.serving.kserve.io", None),
                          ("create", "rolebindings.rbac.authorization.k8s.io", other),
                          ("update", "leases.coordination.k8s.io/someone-else", r.namespace),
                          ("update", lease, other), ("delete", "namespaces", None),
                          ("create", "serviceaccounts/token", r.namespace)]:
        assert not can(verb, res, ns), (verb, res, ns)


def test_least_privilege_namespaced(cluster, namespaced_release):
    r = namespaced_release
    watched = r.values["operator"]["namespaces"]
    other = cluster.restricted_namespace(f"ml-other-{cluster.suffix}")
    can = lambda verb, res, ns, sub=None: cluster.can_i(verb, res, namespace=ns, user=r.sa, subresource=sub)  # noqa: E731
    for ns in watched:
        assert can("watch", "modeldeployments.modelops.dev", ns)
        assert can("patch", "modeldeployments.modelops.dev", ns, "status")
        assert can("create", "inferenceservices.serving.kserve.io", ns)
        assert can("create", "jobs.batch", ns)
    assert can("list", "customresourcedefinitions", None)
    for ns in (other, r.namespace, "default"):
        assert not can("watch", "modeldeployments.modelops.dev", ns)
        assert not can("create", "inferenceservices.serving.kserve.io", ns)
        assert not can("create", "jobs.batch", ns)
    assert not can("list", "modeldeployments.modelops.dev", None)
    for ns in (None, *watched, r.namespace, other):
        assert not can("get", "secrets", ns) and not can("list", "secrets", ns)
    assert can("list", "namespaces", None)  # Kopf's discovery: names only
    assert not can("delete", "namespaces", None) and not can("update", "namespaces", None)
    assert not can("create", "pods", watched[0]) and not can("delete", "configmaps", watched[0])
    assert can("patch", "configmaps", watched[0]) and not can("patch", "configmaps", other)


def test_upgrade_updates_the_crd(cluster, default_release, tmp_path):
    import helm_python as helm

    chart_dir = tmp_path / "modelops"
    shutil.copytree(CHART, chart_dir)
    crd_file = chart_dir / "files/crds/modeldeployments.modelops.dev.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["upgradeProbe"] = {"type": "string", "description": "added by an upgrade"}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    cfg = cluster.helm(default_release.namespace)
    cluster.adopt("crd", CRD_NAME, default_release.name, default_release.namespace)  # if kubectl applied it since
    try:
        rel = cfg.upgrade(helm.Chart.load(str(chart_dir)), default_release.name, default_release.values,
                          namespace=default_release.namespace, timeout=120)
        assert rel["revision"] == 2
        served = cluster.get("crd", CRD_NAME)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert served["properties"]["spec"]["properties"]["upgradeProbe"]["description"] == "added by an upgrade"
    finally:
        cfg.upgrade(helm.Chart.load(str(CHART)), default_release.name, default_release.values,
                    namespace=default_release.namespace, timeout=120)
    served = cluster.get("crd", CRD_NAME)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "upgradeProbe" not in served["properties"]["spec"]["properties"]


def test_uninstall_keeps_crds_and_modeldeployments(cluster, default_release):
    ns = cluster.restricted_namespace(f"ml-keep-{cluster.suffix}")
    md = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "kept", "namespace": ns},
          "spec": {"model": {"name": "kept", "version": "1"}}}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(md))
    crd_uid = cluster.get("crd", CRD_NAME)["metadata"]["uid"]
    out = cluster.helm(default_release.namespace).uninstall(default_release.name, wait="watcher", timeout=120)
    assert "kept due to the resource policy" in out["info"] and CRD_NAME in out["info"]
    assert cluster.get("crd", CRD_NAME)["metadata"]["uid"] == crd_uid
    assert cluster.get("modeldeployment", "kept", "-n", ns)["spec"]["model"]["name"] == "kept"
    assert cluster.get("deployment", f"{default_release.name}-operator", "-n", default_release.namespace) is None
    assert cluster.get("clusterrole", f"{default_release.name}-operator") is None


def test_kubectl_install_and_the_namespaced_overlay(cluster):
    """`kubectl apply --server-side -f manifests/install.yaml`, then `-k manifests/overlays/namespaced`.
    (Last: it takes over the CRD's fields from Helm; --force-conflicts for that.)"""
    from .conftest import REPO_ROOT

    apply = ("apply", "--server-side", "--force-conflicts")
    ns = "modelops-system"
    cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=90s")
    cluster.kubectl(*apply, "-f", str(REPO_ROOT / "manifests/install.yaml"))
    assert cluster.get("namespace", ns)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert_refused_in(cluster, ns)
    release = Release(cluster, "modelops", ns, {})
    wait_operator_pods(cluster, release, 1)
    overlay = yaml.safe_load((REPO_ROOT / "helm/examples/values-namespaced.yaml").read_text())
    for watched in overlay["operator"]["namespaces"]:
        cluster.restricted_namespace(watched)
    cluster.kubectl(*apply, "-k", str(REPO_ROOT / "manifests/overlays/namespaced"))
    for watched in overlay["operator"]["namespaces"]:
        assert cluster.get("role", "modelops-operator", "-n", watched) is not None
    dep = cluster.get("deployment", "modelops-operator", "-n", ns)
    assert "--namespace" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    cluster.wait_for(
        lambda: len(cluster.items("replicasets", "-n", ns, "-l", "app.kubernetes.io/instance=modelops")) == 2,
        what="the overlay's new ReplicaSet")
    refused = [e for e in cluster.items("events", "-n", ns) if e["reason"] == "FailedCreate"]
    assert not refused, refused[0]["message"]
