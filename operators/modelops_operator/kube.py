"""A small Kubernetes REST adapter: get/create/merge-patch/delete of JSON objects.

Plain HTTP (httpx) rather than the generated client: the operator handles every object as a dict
(KServe resources have no generated models), needs explicit merge patches, and must work the
same against a real API server and the kmock emulator in tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        parts = [base]
        if namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return "/".join(parts)


MODELDEPLOYMENTS = Resource("modelops.dev", "v1alpha1", "modeldeployments")
INFERENCESERVICES = Resource("serving.kserve.io", "v1beta1", "inferenceservices")
JOBS = Resource("batch", "v1", "jobs")
PODS = Resource("", "v1", "pods")


class Kube:
    def __init__(self, base_url: str, *, token_file: str | None = None, token: str | None = None,
                 verify: bool | str = True, cert: tuple[str, str] | None = None, timeout: float = 30):
        self._token_file = token_file
        self._token = token
        self._http = httpx.Client(base_url=base_url.rstrip("/"), verify=verify, cert=cert, timeout=timeout)

    @classmethod
    def from_environment(cls, api_url: str | None = None) -> Kube:
        """Explicit URL (tests, `kubectl proxy`), else in-cluster, else the current kubeconfig."""
        if api_url:
            return cls(api_url)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and (SA_DIR / "token").exists():
            host = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            host = f"[{host}]" if ":" in host else host
            return cls(f"https://{host}:{port}", token_file=str(SA_DIR / "token"),
                       verify=str(SA_DIR / "ca.crt"))
        from kubernetes import client, config  # only to read kubeconfig files

        cfg = client.Configuration()
        config.load_kube_config(client_configuration=cfg)
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        token = auth.split(" ", 1)[-1] if auth else None
        verify: bool | str = cfg.ssl_ca_cert or True if cfg.verify_ssl else False
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else None
        return cls(cfg.host, token=token, verify=verify, cert=cert)

    def close(self) -> None:
        self._http.close()

    def _headers(self, content_type: str | None = None) -> dict:
        headers = {"Accept": "application/json"}
        token = self._token
        if self._token_file:  # bound service-account tokens rotate: re-read every time
            token = Path(self._token_file).read_text().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _request(self, method: str, path: str, *, json=None, params=None,
                 content_type: str | None = None) -> httpx.Response:
        try:
            r = self._http.request(method, path, json=json, params=params,
                                   headers=self._headers(content_type))
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{method} {path}: {exc}") from exc
        if r.status_code >= 400 and r.status_code != 404:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise ApiError(r.status_code, f"{method} {path}: {message}")
        return r

    def get(self, path: str) -> dict | None:
        r = self._request("GET", path)
        return None if r.status_code == 404 else r.json()

    def list(self, path: str, label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        r = self._request("GET", path, params=params)
        return [] if r.status_code == 404 else r.json().get("items", [])

    def create(self, path: str, body: dict) -> dict:
        r = self._request("POST", path, json=body)
        if r.status_code == 404:
            raise ApiError(404, f"POST {path}: resource type not found (is its CRD installed?)")
        return r.json()

    def merge_patch(self, path: str, body: dict) -> dict | None:
        r = self._request("PATCH", path, json=body, content_type="application/merge-patch+json")
        return None if r.status_code == 404 else r.json()

    def delete(self, path: str) -> bool:
        r = self._request("DELETE", path, json={"propagationPolicy": "Background"})
        return r.status_code != 404
