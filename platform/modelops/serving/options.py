"""`modelops serve`'s listening, TLS, access-control and audit flags (each with the environment
variable the operator sets on the InferenceService, since the shared ServingRuntime's arguments
are the same for every model)."""

from __future__ import annotations

import argparse
import os

# Literal here (auth.py holds the same): building the CLI parser must not import httpx or grpc.
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_AUDIENCE = "modelops.dev/predict"

def _env(name: str, default=None):
    return os.environ.get(name) or default


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--host", default=_env("MODELOPS_HOST", "0.0.0.0"),
                   help="address of the HTTP and gRPC listeners (default 0.0.0.0: every interface, "
                        "KServe's convention inside a container; local mode passes 127.0.0.1)")
    s.add_argument("--tls-cert", default=_env("MODELOPS_TLS_CERT"),
                   help="PEM certificate (chain): serve HTTPS and gRPC over TLS; reloaded when it changes")
    s.add_argument("--tls-key", default=_env("MODELOPS_TLS_KEY"), help="PEM private key of --tls-cert")
    s.add_argument("--auth", choices=["none", "kubernetes"], default=_env("MODELOPS_AUTH", "none"),
                   help="kubernetes: every request but the probes and /metrics needs a bearer token "
                        "that TokenReview accepts and RBAC allows (get modeldeployments/predict)")
    s.add_argument("--auth-deployment", default=_env("MODELOPS_AUTH_DEPLOYMENT"),
                   help="the ModelDeployment callers must be allowed on (default: --name)")
    s.add_argument("--auth-namespace", default=_env("MODELOPS_AUTH_NAMESPACE"),
                   help=f"its namespace (default: the pod's, {SA_DIR}/namespace)")
    s.add_argument("--auth-audience", action="append", default=None,
                   help=f"accepted token audience, repeatable (env MODELOPS_AUTH_AUDIENCES, comma-"
                        f"separated; default {DEFAULT_AUDIENCE})")
    s.add_argument("--auth-cache-ttl", type=float, default=float(_env("MODELOPS_AUTH_CACHE_TTL", 30)),
                   help="seconds an allowed token stays allowed without a new review (default 30)")
    s.add_argument("--auth-negative-ttl", type=float, default=float(_env("MODELOPS_AUTH_NEGATIVE_TTL", 5)),
                   help="seconds a refused token stays refused (default 5)")
    s.add_argument("--kube-api-url", default=_env("MODELOPS_KUBE_API_URL"),
                   help="API server for the reviews (default: in-cluster, KUBERNETES_SERVICE_HOST)")
    s.add_argument("--kube-token-file", default=_env("MODELOPS_KUBE_TOKEN_FILE"),
                   help=f"the predictor's own token (default {SA_DIR}/token)")
    s.add_argument("--kube-ca-file", default=_env("MODELOPS_KUBE_CA_FILE"),
                   help=f"CA of the API server (default {SA_DIR}/ca.crt)")
    s.add_argument("--audit", choices=["auto", "on", "off"], default=_env("MODELOPS_AUDIT", "auto"),
                   help="one JSON line per protected request on stdout (auto: on with --auth kubernetes)")
    s.add_argument("--audit-sample", type=float, default=float(_env("MODELOPS_AUDIT_SAMPLE", 1.0)),
                   help="fraction of allowed requests audited (refusals always are)")
    s.add_argument("--audit-max-per-second", type=float,
                   default=float(_env("MODELOPS_AUDIT_MAX_PER_SECOND", 0)),
                   help="rate limit of audit lines (0: none); the next line counts those suppressed")
    s.add_argument("--access-log", choices=["on", "off"], default=_env("MODELOPS_ACCESS_LOG", "off"),
                   help="uvicorn's access log, one line per HTTP request on stderr (default off: it costs "
                        "~8%% of a small model's request; env MODELOPS_ACCESS_LOG; the audit line of "
                        "--audit is separate)")
    s.add_argument("--shadow-config", default=_env("MODELOPS_SHADOW_CONFIG"),
                   help="a JSON file (watched: polled every second) telling this predictor to mirror a "
                        "sample of its answered requests to a candidate predictor and compare the answers; "
                        "missing, empty or {} = off (env MODELOPS_SHADOW_CONFIG)")


def from_args(args) -> dict:
    """build()'s host/auth/audit/tls keywords; ValueError naming the flag when they do not fit."""
    from .audit import AuditLog
    from .auth import KubeAuthConfig
    from .tls import TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    auth = None
    if args.auth == "kubernetes":
        audiences = args.auth_audience or [a for a in _env("MODELOPS_AUTH_AUDIENCES", "").split(",") if a]
        auth = KubeAuthConfig.in_cluster(
            args.auth_deployment or args.name, args.auth_namespace,
            api_url=args.kube_api_url, token_file=args.kube_token_file, ca_file=args.kube_ca_file,
            audiences=tuple(audiences) or None, cache_ttl=args.auth_cache_ttl,
            negative_ttl=args.auth_negative_ttl)
    audit_on = args.audit == "on" or (args.audit == "auto" and auth is not None)
    audit = AuditLog(args.audit_sample, args.audit_max_per_second) if audit_on else None
    tls = TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None
    if tls is not None:
        import ssl

        try:
            tls.read()  # a missing or mismatched pair: refused now, not at the first handshake
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--tls-cert/--tls-key: {exc}") from None
    return {"host": args.host, "auth": auth, "audit": audit, "tls": tls,
            "shadow_config": getattr(args, "shadow_config", None),
            "access_log": getattr(args, "access_log", "off") == "on"}
