"""What the operator creates for `spec.predictor.auth: kubernetes`, `.tls` and `.networkPolicy`,
on the real API server, as the ServiceAccount of the chart's own RBAC (`predictorAccess.enabled`,
namespaced mode): the predictor ServiceAccount, its subject in the chart's ClusterRoleBinding (the
real RBAC escalation check applies: the operator may bind system:auth-delegator only), the
NetworkPolicy, the InferenceService as the real server validates it against KServe's CRD. Then the
kubelet's part is played: `modelops serve` runs with that ServiceAccount's token and the
environment the InferenceService gives it, and answers a caller whom RBAC allows, and no other.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from sharedenv import REPO_ROOT

from .conftest import eventually, md_body

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
BINDING = "modelops-predictor-auth"


def chart_rbac(ns: str) -> list[dict]:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import render_manifests

    objs = render_manifests.render({"operator": {"namespaces": [ns]}, "predictorAccess": {"enabled": True}})
    objs = [o for o in objs if o["kind"] in RBAC_KINDS]
    # scripts/rbac_rules_needed.py --predictor-access: the chart's RBAC less one rule
    # ("<Kind>/<name-suffix>/<rule index>"), to show the test fails without it.
    drop = os.environ.get("MODELOPS_TEST_DROP_RULE")
    if drop:
        kind, suffix, index = drop.split("/")
        target = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))
        del target["rules"][int(index)]
    return objs


def test_the_operator_sets_up_predictor_access_and_the_predictor_uses_it(
        cluster, namespace, start_operator, registered, tmp_path):
    from predictor_access import AUDIENCE, Serve, relu_model

    ns, name = namespace, "guarded"
    if cluster.kubectl("get", "namespace", "modelops-system", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "modelops-system")
    for obj in chart_rbac(ns):
        cluster.apply(json.dumps(obj))
    sa_kubeconfig = cluster.token_kubeconfig(tmp_path / "sa.kubeconfig", "modelops-operator", "modelops-system")
    # Least privilege still: no cluster-wide bindings of its own choosing, no Secrets.
    for verb, what in (("create", "clusterrolebindings"), ("patch", "clusterrolebindings/other"),
                       ("bind", "clusterroles/cluster-admin"), ("get", "secrets")):
        can = cluster.kubectl("auth", "can-i", verb, what, "-n", ns, kubeconfig=sa_kubeconfig, check=False)
        assert can.stdout.strip() == "no", (verb, what)
    op = start_operator(ns, sa_kubeconfig, "--predictor-access", "--predictor-auth-binding", BINDING)
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}}
    cluster.apply(md_body(name, {"name": registered["name"], "version": registered["v1"]},
                          predictor={"auth": "kubernetes", "tls": {"secretName": "guarded-tls"},
                                     "networkPolicy": {"from": [peer]}}), "-n", ns)

    isvc = eventually(lambda: cluster.get("inferenceservice", ns, name), timeout=120, what="the InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "modelops-predictor"
    env = {e["name"]: e.get("value") for e in predictor["model"]["env"]}
    assert (env["MODELOPS_AUTH"], env["MODELOPS_AUTH_DEPLOYMENT"], env["MODELOPS_AUTH_AUDIENCES"]) == \
        ("kubernetes", name, AUDIENCE)
    assert env["MODELOPS_TLS_CERT"] == "/etc/modelops/tls/tls.crt"
    assert predictor["volumes"][0]["secret"]["secretName"] == "guarded-tls"

    sa = cluster.get("serviceaccount", ns, "modelops-predictor")
    md = cluster.get("modeldeployment", ns, name)
    assert [o["uid"] for o in sa["metadata"]["ownerReferences"]] == [md["metadata"]["uid"]]
    binding = json.loads(cluster.kubectl("get", "clusterrolebinding", BINDING, "-o", "json").stdout)
    assert {"kind": "ServiceAccount", "name": "modelops-predictor", "namespace": ns} in binding["subjects"]
    netpol = cluster.get("networkpolicy", ns, f"{name}-predictor")
    assert netpol["spec"]["ingress"][0]["from"] == [peer]
    who = f"system:serviceaccount:{ns}:modelops-predictor"
    for verb, what in (("create", "tokenreviews"), ("create", "subjectaccessreviews")):
        assert cluster.kubectl("auth", "can-i", verb, what, "--as", who).stdout.strip() == "yes"
    assert cluster.kubectl("auth", "can-i", "get", "secrets", "-n", ns, "--as", who,
                           check=False).stdout.strip() == "no"

    # The kubelet's part: the predictor with its ServiceAccount's token and the InferenceService's env.
    token_file, ca_file = tmp_path / "token", tmp_path / "ca.crt"
    token_file.write_text(cluster.kubectl("-n", ns, "create", "token", "modelops-predictor").stdout.strip())
    import base64

    import yaml

    kc = yaml.safe_load(open(cluster.kubeconfig))["clusters"][0]["cluster"]
    ca_file.write_bytes(base64.b64decode(kc["certificate-authority-data"]))
    for sa_name in ("scorer", "stranger"):
        cluster.kubectl("-n", ns, "create", "serviceaccount", sa_name)
    cluster.kubectl("-n", ns, "create", "role", "predict", "--verb=get",
                    "--resource=modeldeployments.modelops.dev/predict", f"--resource-name={name}")
    cluster.kubectl("-n", ns, "create", "rolebinding", "scorer-predict", "--role=predict",
                    f"--serviceaccount={ns}:scorer")
    srv = Serve(relu_model(tmp_path / "m"), name, tmp_path, "--auth", env["MODELOPS_AUTH"],
                "--auth-deployment", env["MODELOPS_AUTH_DEPLOYMENT"], "--auth-audience", env["MODELOPS_AUTH_AUDIENCES"],
                "--auth-namespace", ns, "--kube-api-url", kc["server"], "--kube-token-file", str(token_file),
                "--kube-ca-file", str(ca_file))
    try:
        scorer = cluster.kubectl("-n", ns, "create", "token", "scorer", f"--audience={AUDIENCE}").stdout.strip()
        stranger = cluster.kubectl("-n", ns, "create", "token", "stranger", f"--audience={AUDIENCE}").stdout.strip()
        assert srv.infer(scorer).status_code == 200
        assert srv.infer(stranger).status_code == 403
        assert srv.infer(None).status_code == 401
    finally:
        srv.stop()

    # The NetworkPolicy goes with its field; the ServiceAccount with the last ModelDeployment using it.
    cluster.patch("modeldeployment", ns, name, {"spec": {"predictor": {"networkPolicy": None}}})
    eventually(lambda: cluster.get("networkpolicy", ns, f"{name}-predictor") is None, what="NetworkPolicy removed")
    cluster.kubectl("-n", ns, "delete", "modeldeployment", name, "--wait=false")
    eventually(lambda: cluster.get("serviceaccount", ns, "modelops-predictor") is None, timeout=90,
               what="the predictor ServiceAccount garbage-collected")
    assert op.alive()
    assert "Forbidden" not in op.output(), op.output()[-3000:]
