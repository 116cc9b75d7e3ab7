"""What the operator creates so that a predictor can check its callers, and who may reach it.

`spec.predictor.auth: kubernetes` (or the operator's default, `--predictor-auth`):
- the namespace's **ServiceAccount `modelops-predictor`**, shared by the predictors of the
  namespace, owned (non-controller owner references) by every ModelDeployment that uses it, so
  Kubernetes' garbage collector removes it with the last of them;
- that ServiceAccount added as a subject of the **ClusterRoleBinding the chart creates**
  (`predictorAccess.enabled`: `<release>-predictor-auth`, to `system:auth-delegator`, whose only
  rights are `create tokenreviews` and `create subjectaccessreviews`, cluster-scoped kinds that no
  RoleBinding can grant). The operator may get and patch that one binding (resourceNames) and bind
  only that one ClusterRole: it can create no other cluster-wide binding;
- the InferenceService's predictors run as that ServiceAccount, with `MODELOPS_AUTH=kubernetes`,
  the ModelDeployment's name and the accepted token audiences in their environment.

`spec.predictor.tls.secretName`: the Secret is mounted read-only at `/etc/modelops/tls`
(`tls.crt`, `tls.key`: a cert-manager Certificate's Secret as it is), the predictor serves HTTPS
and gRPC over TLS from it (reloaded when the kubelet updates the volume), its probes use HTTPS.

`spec.predictor.networkPolicy`: a NetworkPolicy `<name>-predictor` (owned by the ModelDeployment)
selecting its predictor Pods, admitting to ports 8080/8081 only the peers named, plus the
operator's metrics scraper (`--predictor-scraper-peer`, a NetworkPolicyPeer), the deployment's
own predictors with `rollout.shadow` (the stable mirrors to the candidate) and its load-test Pods
with `rollout.performanceGate`; removed when the field goes.
"""

from __future__ import annotations

from modelops.deployment.spec import DeploymentSpec
from modelops.errors import InvalidSpec

from .builders import LABEL_DEPLOYMENT, MANAGED_BY, owner_reference
from .config import OperatorConfig
from .kube import ApiError, Kube

PREDICTOR_SA = "modelops-predictor"
TLS_VOLUME, TLS_DIR = "modelops-tls", "/etc/modelops/tls"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
PORTS = (8080, 8081)


HINT = "the operator's chart value predictorAccess.enabled=true"


def effective_auth(spec: DeploymentSpec, config: OperatorConfig) -> str:
    return spec.predictor.auth or config.predictor_auth


def check_available(spec: DeploymentSpec, config: OperatorConfig) -> None:
    """InvalidSpec naming the field when the spec asks for what this operator may not create."""
    if config.predictor_access:
        return
    if effective_auth(spec, config) == "kubernetes":
        raise InvalidSpec("spec.predictor.auth", f"kubernetes needs {HINT} (the predictor's "
                                                 "ServiceAccount and its TokenReview rights)")
    if spec.predictor.network_policy is not None:
        raise InvalidSpec("spec.predictor.networkPolicy", f"needs {HINT}")


# --- the InferenceService ----------------------------------------------------------------------
def _predictors(isvc: dict) -> list[dict]:
    spec = isvc["spec"]
    return [spec["predictor"], *(c["predictor"] for c in spec.get("canary") or [])]


def decorate_inference_service(isvc: dict, spec: DeploymentSpec, config: OperatorConfig) -> dict:
    """Add auth (ServiceAccount, environment) and TLS (volume, environment, HTTPS probes) to every
    predictor of `isvc` (stable and canary alike). Returns `isvc`, changed in place."""
    auth = effective_auth(spec, config) == "kubernetes"
    tls = spec.predictor.tls_secret
    if not auth and not tls:
        return isvc
    name = isvc["metadata"]["name"]
    for predictor in _predictors(isvc):
        model = predictor["model"]
        env = model.setdefault("env", [])
        if auth:
            predictor["serviceAccountName"] = PREDICTOR_SA
            env += [{"name": "MODELOPS_AUTH", "value": "kubernetes"},
                    {"name": "MODELOPS_AUTH_DEPLOYMENT", "value": name},
                    {"name": "MODELOPS_AUTH_AUDIENCES", "value": ",".join(config.predictor_audiences)}]
        if tls:
            predictor["volumes"] = [{"name": TLS_VOLUME, "secret": {"secretName": tls}}]
            model["volumeMounts"] = [{"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}]
            env += [{"name": "MODELOPS_TLS_CERT", "value": f"{TLS_DIR}/tls.crt"},
                    {"name": "MODELOPS_TLS_KEY", "value": f"{TLS_DIR}/tls.key"}]
            https = {"port": 8080, "scheme": "HTTPS"}
            model["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", **https}, "periodSeconds": 5}
            model["livenessProbe"] = {"httpGet": {"path": "/v2/health/live", **https}, "periodSeconds": 10,
                                      "failureThreshold": 6}
    return isvc


# --- the ServiceAccount and its binding ----------------------------------------------------------
def _owner(md: dict) -> dict:
    return {**owner_reference(md), "controller": False}


def build_predictor_service_account(md: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": PREDICTOR_SA, "namespace": md["metadata"]["namespace"],
                         "labels": {**MANAGED_BY, "modelops.dev/component": "predictor"},
                         "ownerReferences": [_owner(md)]}}


def service_account_patch(observed: dict, md: dict) -> dict | None:
    """Add `md` to the owners (a merge patch replaces the whole list: it carries them all)."""
    owners = observed["metadata"].get("ownerReferences") or []
    if any(o.get("uid") == md["metadata"]["uid"] for o in owners):
        return None
    return {"metadata": {"ownerReferences": [*owners, _owner(md)]}}


def binding_patch(observed: dict, namespace: str) -> dict | None:
    subjects = observed.get("subjects") or []
    subject = {"kind": "ServiceAccount", "name": PREDICTOR_SA, "namespace": namespace}
    if any(s.get("kind") == "ServiceAccount" and s.get("name") == PREDICTOR_SA and s.get("namespace") == namespace
           for s in subjects):
        return None
    return {"subjects": [*subjects, subject]}


# --- the NetworkPolicy ---------------------------------------------------------------------------
def network_policy_name(md_name: str) -> str:
    return f"{md_name[:63 - len('-predictor')]}-predictor"


def build_network_policy(md: dict, spec: DeploymentSpec, scraper_peer: dict | None = None) -> dict:
    meta = md["metadata"]
    peers = [dict(p) for p in spec.predictor.network_policy or ()]
    if scraper_peer:
        peers.append(dict(scraper_peer))
    if spec.rollout.shadow is not None:  # the stable predictor mirrors to the candidate
        peers.append({"podSelector": {"matchLabels": {ISVC_LABEL: meta["name"]}}})
    if spec.rollout.performance_gate is not None:  # the gate's load-test Job measures both
        peers.append({"podSelector": {"matchLabels": {LABEL_DEPLOYMENT: meta["name"],
                                                      "modelops.dev/component": "loadtest"}}})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {**MANAGED_BY, LABEL_DEPLOYMENT: meta["name"]},
                     "ownerReferences": [owner_reference(md)]},
        "spec": {"podSelector": {"matchLabels": {ISVC_LABEL: meta["name"]}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": peers, "ports": [{"port": p, "protocol": "TCP"} for p in PORTS]}]},
    }


# --- I/O ---------------------------------------------------------------------------------------------
def apply_access(kube: Kube, md: dict, spec: DeploymentSpec, config: OperatorConfig) -> list[str]:
    """Make the ServiceAccount, its binding and the NetworkPolicy match the spec; what was written.
    Nothing at all (not even a read) when this operator was not given predictor access."""
    ns, name = md["metadata"]["namespace"], md["metadata"]["name"]
    wrote: list[str] = []
    if not config.predictor_access:
        return wrote
    try:
        if effective_auth(spec, config) == "kubernetes":
            sa_path = f"/api/v1/namespaces/{ns}/serviceaccounts"
            _, changed = kube.apply_merge(f"{sa_path}/{PREDICTOR_SA}", sa_path, build_predictor_service_account(md),
                                          lambda observed: service_account_patch(observed, md))
            wrote += ["serviceaccount"] if changed else []
            binding = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{config.predictor_auth_binding}"
            observed = kube.get(binding)
            if observed is None:
                raise ApiError(404, f"the ClusterRoleBinding {config.predictor_auth_binding} is missing")
            patch = binding_patch(observed, ns)
            if patch:
                kube.merge_patch(binding, patch, resource_version=observed["metadata"].get("resourceVersion"))
                wrote.append("clusterrolebinding")
        np_path = f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
        np_name = network_policy_name(name)
        if spec.predictor.network_policy is not None:
            desired = build_network_policy(md, spec, config.predictor_scraper_peer)
            _, changed = kube.apply_merge(
                f"{np_path}/{np_name}", np_path, desired,
                lambda observed: None if observed.get("spec") == desired["spec"] else {"spec": desired["spec"]})
            wrote += ["networkpolicy"] if changed else []
        elif kube.get(f"{np_path}/{np_name}") is not None:
            kube.delete(f"{np_path}/{np_name}")
            wrote.append("networkpolicy")
    except ApiError as exc:
        if exc.status in (403, 404):  # the chart's RBAC or binding is not what it should be
            raise ApiError(exc.status, f"{ns}/{name} predictor access: {exc} (needs {HINT})") from exc
        raise
    return wrote


# --- flags ---------------------------------------------------------------------------------------
def add_arguments(ap, env) -> None:
    import json

    ap.add_argument("--predictor-access", action="store_true",
                    default=env.get("MODELOPS_PREDICTOR_ACCESS", "").lower() == "true",
                    help="create predictor ServiceAccounts and NetworkPolicies and bind them for auth "
                         "(env MODELOPS_PREDICTOR_ACCESS; the chart's predictorAccess.enabled)")
    ap.add_argument("--predictor-auth", choices=["none", "kubernetes"],
                    default=env.get("MODELOPS_PREDICTOR_AUTH") or "none",
                    help="spec.predictor.auth where a ModelDeployment does not set it")
    ap.add_argument("--predictor-audience", action="append",
                    default=[a for a in env.get("MODELOPS_PREDICTOR_AUDIENCES", "").split(",") if a] or None,
                    help="token audience the predictors accept (repeatable; default modelops.dev/predict)")
    ap.add_argument("--predictor-auth-binding", default=env.get("MODELOPS_PREDICTOR_AUTH_BINDING")
                    or "modelops-predictor-auth", help="the ClusterRoleBinding to system:auth-delegator")
    ap.add_argument("--predictor-scraper-peer", type=json.loads,
                    default=json.loads(env.get("MODELOPS_PREDICTOR_SCRAPER_PEER") or "null"),
                    help="NetworkPolicyPeer (JSON) every predictor NetworkPolicy admits: the metrics scraper")


def config_from_args(args) -> dict:
    out = {"predictor_access": args.predictor_access, "predictor_auth": args.predictor_auth,
           "predictor_auth_binding": args.predictor_auth_binding,
           "predictor_scraper_peer": args.predictor_scraper_peer or None}
    if args.predictor_audience:
        out["predictor_audiences"] = tuple(args.predictor_audience)
    return out
