"""Fixtures of the chart's cluster tests: the real control plane (../shared/k8s), Helm releases."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm/modelops"
EXAMPLES = REPO_ROOT / "helm/examples"
CRD_NAME = "modeldeployments.modelops.dev"
RUNTIME_NAME = "modelops-onnxruntime"
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"


def example_values(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"values-{name}.yaml").read_text())


@dataclass
class Cluster:
    cp: object  # sharedenv.ControlPlane
    suffix: str

    def kubectl(self, *args, **kw):
        return self.cp.kubectl(*args, **kw)

    def get(self, *args) -> dict | None:
        proc = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def items(self, *args) -> list[dict]:
        return (self.get(*args) or {}).get("items", [])

    def restricted_namespace(self, name: str) -> str:
        if self.get("namespace", name) is None:
            self.kubectl("create", "namespace", name)
        self.kubectl("label", "--overwrite", "namespace", name, RESTRICTED)
        return name

    def helm(self, namespace: str):
        import helm_python as helm

        return helm.Config(kubeconfig_path=self.cp.kubeconfig, namespace=namespace)

    def adopt(self, kind: str, name: str, release: str, namespace: str) -> None:
        """Hand a cluster-scoped object created outside Helm (another test tier applied the CRD
        with kubectl) to `release`: Helm's documented adoption (its annotations and label), and no
        other server-side-apply field manager left to conflict with Helm's apply."""
        if self.get(kind, name) is None:
            return
        self.kubectl("annotate", "--overwrite", kind, name, f"meta.helm.sh/release-name={release}",
                     f"meta.helm.sh/release-namespace={namespace}")
        self.kubectl("label", "--overwrite", kind, name, "app.kubernetes.io/managed-by=Helm")
        # kubectl's server-side apply owns the fields it applied: Helm's apply of other values
        # (a new schema, another release's labels) would conflict. Leave them unowned.
        obj = json.loads(self.kubectl("get", kind, name, "-o", "json", "--show-managed-fields").stdout)
        fields = obj["metadata"].get("managedFields") or []
        kept = [m for m in fields if not m["manager"].startswith("kubectl") and m["manager"] != "before-first-apply"]
        if len(kept) != len(fields):
            kept = kept or [{"manager": "adopted-by-helm", "operation": "Update", "apiVersion": obj["apiVersion"],
                             "fieldsType": "FieldsV1",
                             "fieldsV1": {"f:metadata": {"f:annotations": {"f:meta.helm.sh/release-name": {}}}}}]
            self.kubectl("patch", kind, name, "--type=json", "-p", json.dumps(
                [{"op": "replace", "path": "/metadata/managedFields", "value": kept}]))

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig authenticating as the ServiceAccount (`kubectl create token`)."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration", "2h").stdout.strip()
        admin = yaml.safe_load(Path(self.cp.kubeconfig).read_text())
        cluster = admin["clusters"][0]["cluster"]
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": service_account,
                                                    "namespace": namespace}}],
            "current-context": "sa"}))
        return path

    def can_i(self, verb: str, resource: str, *, namespace: str | None, user: str,
              subresource: str | None = None) -> bool:
        args = ["auth", "can-i", verb, resource, f"--as={user}"]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if subresource:
            args += ["--subresource", subresource]
        proc = self.kubectl(*args, check=False)
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), proc.stderr
        return answer == "yes"

    def wait_for(self, check, timeout: float = 60, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def events(self, namespace: str, involved_name: str) -> list[dict]:
        return [e for e in self.items("events", "-n", namespace)
                if e.get("involvedObject", {}).get("name") == involved_name]


@pytest.fixture(scope="session")
def cluster(control_plane) -> Cluster:
    return Cluster(control_plane, uuid.uuid4().hex[:5])


@pytest.fixture(scope="session")
def published_model(tracking_uri, tmp_path_factory) -> dict:
    """A registered torch MLP: v1 converted and published (fp32 defaults), v2 not converted;
    alias `champion` on v1. What an operator in job mode reuses without running a Job."""
    from mlflow.tracking import MlflowClient

    from modelops.conversion import ConversionOptions, convert_and_publish
    from modelops.demo.models import register_torch_mlp
    from modelops.registry import Registry

    name = f"helm-mlp-{uuid.uuid4().hex[:6]}"
    v1 = register_torch_mlp(tracking_uri, name, seed=0)
    v2 = register_torch_mlp(tracking_uri, name, seed=1)
    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(name, "champion", v1)
    registry = Registry(tracking_uri)
    result = convert_and_publish(registry, registry.resolve_version(name, version=v1), ConversionOptions(),
                                 work_dir=tmp_path_factory.mktemp("convert"))
    return {"name": name, "v1": v1, "v2": v2, "onnx_uri": result.onnx_uri, "sha256": result.sha256,
            "tracking_uri": tracking_uri}
