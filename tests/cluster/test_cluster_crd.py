"""The ModelDeployment CRD on a real kube-apiserver: it installs, the examples pass server-side
dry-run, and every spec the schema tests reject is rejected by the real server, naming the field."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from k8s.test_crd_schema import _DELETE, MALFORMED, _set, valid_md
from sharedenv import REPO_ROOT

pytestmark = pytest.mark.timeout(300)


def server_dry_run(cluster, obj: dict):
    return cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj),
                           check=False)


def test_crd_installs_and_is_established(cluster):
    crd = cluster.get("crd", "default", "modeldeployments.modelops.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["md"]
    # the server stored what we ship (no field dropped as unknown)
    shipped = yaml.safe_load(REPO_ROOT.joinpath("manifests/crds/modeldeployments.modelops.dev.yaml").read_text())
    assert crd["spec"]["versions"][0]["schema"] == shipped["spec"]["versions"][0]["schema"]


def test_examples_pass_server_side_dry_run(cluster):
    examples = sorted((REPO_ROOT / "manifests/examples").glob("*.yaml"))
    assert examples
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        ns = doc["metadata"].get("namespace", "default")
        if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
            cluster.kubectl("create", "namespace", ns)
        proc = server_dry_run(cluster, doc)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
        assert json.loads(proc.stdout)["spec"]["model"] == doc["spec"]["model"]


def test_valid_spec_is_accepted(cluster):
    obj = valid_md()
    obj["metadata"]["namespace"] = "default"
    proc = server_dry_run(cluster, obj)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case,path,value,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_rejected_by_the_real_server_naming_the_field(cluster, case, path, value, field):
    obj = valid_md()
    obj["metadata"]["namespace"] = "default"
    if case == "neither-version-nor-alias":
        obj["spec"]["model"].pop("version", None)
    _set(obj, path, value if value is _DELETE else copy.deepcopy(value))
    proc = server_dry_run(cluster, obj)
    assert proc.returncode != 0, f"{case}: the API server accepted it"
    message = proc.stderr
    assert "is invalid" in message, message
    leaf = field.rsplit(".", 1)[-1].split("[")[0]
    assert field in message or leaf in message, (case, message)


def test_the_server_defaults_and_rules_are_the_parsers(cluster):
    """The parser fills the schema's defaults before the rules, as the real server does: the
    server's defaulted object is the parser's, and both refuse minReplicas over the default max."""
    from modelops.deployment.spec import parse_spec
    from modelops.deployment.validation import validated

    spec = {"model": {"name": "m", "version": "1"}, "conversion": {}, "predictor": {"gpu": 0},
            "rollout": {"analysis": {"successRate": {}, "clientErrors": {}}},
            "hooks": {"webhooks": [{"name": "w", "url": "http://x"}]}}
    obj = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "defaults", "namespace": "default"}, "spec": spec}
    proc = server_dry_run(cluster, obj)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"] == validated(spec)
    obj["spec"] = {"model": {"name": "m", "version": "1"}, "predictor": {"minReplicas": 3}}
    proc = server_dry_run(cluster, obj)
    assert proc.returncode != 0 and "predictor.minReplicas must not exceed predictor.maxReplicas" in proc.stderr
    with pytest.raises(Exception, match="predictor.minReplicas must not exceed predictor.maxReplicas"):
        parse_spec(obj["spec"])
