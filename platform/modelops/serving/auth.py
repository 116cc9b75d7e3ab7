"""Who may call the predictor: Kubernetes bearer tokens, checked the way the API server checks them.

`modelops serve --auth kubernetes` requires `Authorization: Bearer <token>` (gRPC: the
`authorization` metadata key) on every route except the probes and the scrape endpoint
(`OPEN_PATHS`, `OPEN_GRPC_METHODS`). A token is accepted when the API server's **TokenReview**
authenticates it for one of our audiences, and the caller it names is allowed by a
**SubjectAccessReview** to `get` `modeldeployments/predict` (group `modelops.dev`) on this
ModelDeployment in its namespace. Access is therefore granted with ordinary RBAC
(`kubectl create role ... --verb=get --resource=modeldeployments.modelops.dev/predict`).

Both reviews are two POSTs of well-defined JSON to the API server, made here with httpx (the
predictor image carries no Kubernetes client: `modelops` never imports one, and the reviews need
none of its machinery). The predictor authenticates with its own ServiceAccount token (re-read
when the kubelet rotates it) and trusts the cluster CA.

Answers are cached per token digest (never the token itself), the allowed ones for `cache_ttl`
seconds and the refused ones for `negative_ttl`, in bounded LRU caches; concurrent requests with
the same token share one review. An API server that cannot answer (unreachable, a timeout, a 5xx,
or refusing the predictor's own token) makes the request fail with 503 and is not cached: the
predictor fails closed, never open.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass, field

import httpx
from cachetools import TTLCache

from ..errors import AuthUnavailable, Forbidden, ModelOpsError, Unauthenticated

log = logging.getLogger("modelops.serving.auth")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
GROUP, RESOURCE, SUBRESOURCE, VERB = "modelops.dev", "modeldeployments", "predict", "get"
DEFAULT_AUDIENCE = "modelops.dev/predict"
MAX_TOKEN_BYTES = 16 * 1024
# Probes (kubelet carries no token) and the Prometheus scrape stay open; everything else is closed.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
OPEN_GRPC_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                               "/inference.GRPCInferenceService/ServerReady"})

# The `reason` label of modelops_predictor_auth_denied_total.
MISSING, INVALID, FORBIDDEN, UNAVAILABLE = "missing_token", "invalid_token", "forbidden", "unavailable"


@dataclass(frozen=True)
class KubeAuthConfig:
    """Where the API server is, how we prove who we are, and what a caller must be allowed."""

    namespace: str
    deployment: str  # the ModelDeployment's name: the SubjectAccessReview's resource name
    api_url: str = "https://kubernetes.default.svc"
    token_file: str = f"{SA_DIR}/token"
    ca_file: str | None = f"{SA_DIR}/ca.crt"  # None: the system trust store
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    cache_ttl: float = 30.0  # seconds an allowed caller stays allowed without a new review
    negative_ttl: float = 5.0  # seconds a refused token stays refused
    cache_size: int = 10_000
    timeout: float = 5.0

    @classmethod
    def in_cluster(cls, deployment: str, namespace: str | None = None, **overrides) -> KubeAuthConfig:
        """The API server of the pod we run in (KUBERNETES_SERVICE_HOST/PORT), our SA token and CA."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if "api_url" not in overrides and host:
            overrides["api_url"] = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        if namespace is None:
            try:
                with open(f"{SA_DIR}/namespace") as fh:
                    namespace = fh.read().strip()
            except OSError:
                raise ValueError("--auth kubernetes needs --auth-namespace outside a pod "
                                 f"({SA_DIR}/namespace is not there)") from None
        return cls(namespace=namespace, deployment=deployment,
                   **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Caller:
    """Who a reviewed token belongs to (TokenReview's status.user)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Decision:
    caller: Caller | None
    error: ModelOpsError | None = None  # None: allowed
    denied_reason: str = ""  # the counter's label when refused

    @property
    def allowed(self) -> bool:
        return self.error is None

    @property
    def who(self) -> str:
        return self.caller.username if self.caller else "-"


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer` header, or Unauthenticated saying what is wrong."""
    if not header:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header is not a bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("bearer token too long")
    return token


class TokenFile:
    """Our own ServiceAccount token, re-read when the kubelet rotates it (projected tokens expire)."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple | None = None
        self._token = ""

    def get(self) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path) as fh:
                    self._token = fh.read().strip()
                self._stamp = stamp
        except OSError as exc:
            raise AuthUnavailable(f"cannot read the predictor's service-account token: {exc.strerror}") from None
        return self._token


class KubeGuard:
    """Decides whether a bearer token may call this predictor (cached TokenReview + SubjectAccessReview)."""

    def __init__(self, config: KubeAuthConfig):
        self.config = config
        self._allowed: TTLCache = TTLCache(config.cache_size, config.cache_ttl)
        self._refused: TTLCache = TTLCache(config.cache_size, config.negative_ttl)
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._token = TokenFile(config.token_file)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.config.ca_file:
                verify = ssl.create_default_context(cafile=self.config.ca_file)
            self._client = httpx.AsyncClient(base_url=self.config.api_url, verify=verify,
                                             timeout=self.config.timeout, trust_env=False,
                                             limits=httpx.Limits(max_connections=8))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self, header: str | None) -> Decision:
        try:
            token = bearer_token(header)
        except Unauthenticated as exc:
            return Decision(None, exc, MISSING if not header else INVALID)
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        cached = self._allowed.get(key)  # the hot path: one look-up
        if cached is None:
            cached = self._refused.get(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            decision = await self._review(token)
            if decision.allowed:
                self._allowed[key] = decision
            elif decision.denied_reason != UNAVAILABLE:
                self._refused[key] = decision
            future.set_result(decision)
            return decision
        except Exception as exc:  # a bug: the waiters get it too
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException:  # cancelled: so are the waiters (they retry with a new review)
            future.cancel()
            raise
        finally:
            del self._inflight[key]

    async def _post(self, path: str, body: dict) -> dict:
        try:
            response = await self._http().post(path, json=body,
                                               headers={"Authorization": f"Bearer {self._token.get()}"})
        except httpx.HTTPError as exc:
            raise AuthUnavailable(f"the Kubernetes API server did not answer ({type(exc).__name__})") from None
        if response.status_code != 201 and response.status_code != 200:
            # 401/403: the predictor's own token or RBAC is wrong; 5xx: the API server. Either way closed.
            raise AuthUnavailable(f"the Kubernetes API server refused the {body['kind']} "
                                  f"(HTTP {response.status_code})")
        try:
            return response.json()
        except ValueError:
            raise AuthUnavailable(f"the Kubernetes API server's {body['kind']} answer is not JSON") from None

    async def _review(self, token: str) -> Decision:
        c = self.config
        try:
            review = await self._post("/apis/authentication.k8s.io/v1/tokenreviews", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": list(c.audiences)}})
            status = review.get("status") or {}
            if not status.get("authenticated") or not set(status.get("audiences") or c.audiences) & set(c.audiences):
                return Decision(None, Unauthenticated("invalid bearer token (not accepted by the API "
                                                      "server for this audience, or expired)"), INVALID)
            user = status.get("user") or {}
            caller = Caller(user.get("username", ""), user.get("uid", ""), tuple(user.get("groups") or ()),
                            user.get("extra") or {})
            sar = await self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": caller.username, "uid": caller.uid, "groups": list(caller.groups),
                         "extra": caller.extra,
                         "resourceAttributes": {"namespace": c.namespace, "verb": VERB, "group": GROUP,
                                                "resource": RESOURCE, "subresource": SUBRESOURCE,
                                                "name": c.deployment}}})
        except AuthUnavailable as exc:
            log.warning("access review failed, refusing the request: %s", exc)
            return Decision(None, exc, UNAVAILABLE)
        if not (sar.get("status") or {}).get("allowed"):
            return Decision(caller, Forbidden(
                f"{caller.username} may not {VERB} {RESOURCE}/{SUBRESOURCE} '{c.deployment}' "
                f"in namespace '{c.namespace}'"), FORBIDDEN)
        return Decision(caller)
