"""The operator's Kubernetes calls: get/list/create/merge-patch/delete of JSON objects as dicts.

Everything on the wire is the official `kubernetes` client's: its kubeconfig and in-cluster
loaders (client certificates as files or `-data`, bearer tokens, `exec` credential plugins whose
tokens it refreshes when they expire, rotating service-account tokens, contexts, proxies, TLS
server names) and its HTTP layer. This module only keeps the operator's dict-in/dict-out shape
(KServe's resources have no generated models) and maps failures to `ApiError`.

Writes to objects that others also write (an InferenceService: KServe's controller, users) carry
the `resourceVersion` they were computed from, so a concurrent change answers 409 Conflict
instead of being silently overwritten; `apply_merge` re-reads and retries.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("modelops.operator")

MERGE_PATCH = "application/merge-patch+json"


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


def load_configuration(api_url: str | None = None) -> client.Configuration:
    """The client configuration: an explicit URL without auth (`kubectl proxy`, the test
    emulator), else in-cluster (service-account token re-read as it rotates), else the current
    kubeconfig context ($KUBECONFIG or ~/.kube/config): the same order as Kopf's own login."""
    cfg = client.Configuration()
    if api_url:
        cfg.host = api_url.rstrip("/")
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            # $KUBECONFIG as it is now (the client reads it once, at import); never write back.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                    client_configuration=cfg, persist_config=False)
    # Reconcile passes run in up to 16 worker threads; keep a connection for each.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 32)
    return cfg


class Kube:
    def __init__(self, configuration: client.Configuration, *, timeout: float = 30):
        self.api = client.ApiClient(configuration)
        self.timeout = timeout

    @classmethod
    def from_environment(cls, api_url: str | None = None) -> Kube:
        return cls(load_configuration(api_url))

    def close(self) -> None:
        self.api.close()

    def _request(self, method: str, path: str, *, body=None, params: dict | None = None,
                 content_type: str = "application/json") -> tuple[int, dict | None]:
        """(status, decoded body); 404 is returned, every other error status raises ApiError."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            # param_serialize adds the credentials (and runs the client's token refresh hook).
            request = self.api.param_serialize(method, path, query_params=list((params or {}).items()),
                                               header_params=headers, body=body,
                                               auth_settings=["BearerToken"])
            response = self.api.call_api(*request, _request_timeout=self.timeout)
            data = response.read()
        except ApiException as exc:  # raised by the client for some transport-level failures
            status, data = exc.status or 0, (exc.body or str(exc.reason or exc).encode())
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: {exc}") from exc
        else:
            status = response.status
        if isinstance(data, str):
            data = data.encode()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if status >= 400 and status != 404:
            message = decoded.get("message") if isinstance(decoded, dict) else None
            raise ApiError(status, f"{method} {path}: {message or data[:500].decode(errors='replace')}")
        return status, decoded

    def get(self, path: str) -> dict | None:
        status, body = self._request("GET", path)
        return None if status == 404 else body

    def list(self, path: str, label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        status, body = self._request("GET", path, params=params)
        return [] if status == 404 else (body or {}).get("items", [])

    def create(self, path: str, body: dict) -> dict:
        status, created = self._request("POST", path, body=body)
        if status == 404:
            raise ApiError(404, f"POST {path}: resource type not found (is its CRD installed?)")
        return created

    def merge_patch(self, path: str, body: dict, resource_version: str | None = None) -> dict | None:
        """JSON merge patch; with `resource_version` the server refuses (409) a changed object."""
        if resource_version is not None:
            meta = dict(body.get("metadata") or {}, resourceVersion=resource_version)
            body = {**body, "metadata": meta}
        status, patched = self._request("PATCH", path, body=body, content_type=MERGE_PATCH)
        return None if status == 404 else patched

    def delete(self, path: str) -> bool:
        status, _ = self._request("DELETE", path, body={"propagationPolicy": "Background"})
        return status != 404

    def apply_merge(self, path: str, create_path: str, desired: dict,
                    diff: Callable[[dict], dict | None], attempts: int = 5,
                    create_first: bool = False) -> tuple[dict, bool]:
        """Make the object at `path` match: create it, or merge-patch what `diff(observed)` says,
        under the observed `resourceVersion`; on 409 re-read and recompute. (object, wrote?).
        `create_first` (the caller has no reason to think it exists): POST without reading first;
        409 AlreadyExists goes the usual way."""
        if create_first:
            try:
                return self.create(create_path, desired), True
            except ApiError as exc:
                if exc.status != 409:
                    raise
                log.info("%s exists already (%s); reading it", path, exc)
        for attempt in range(attempts):
            observed = self.get(path)
            try:
                if observed is None:
                    return self.create(create_path, desired), True
                patch = diff(observed)
                if not patch:
                    return observed, False
                version = observed["metadata"].get("resourceVersion")
                patched = self.merge_patch(path, patch, resource_version=version)
                if patched is None:  # deleted in between: create it on the next attempt
                    continue
                return patched, True
            except ApiError as exc:
                if exc.status != 409 or attempt == attempts - 1:
                    raise
                log.info("%s changed concurrently (%s); re-reading", path, exc)
        raise ApiError(409, f"{path}: still conflicting after {attempts} attempts")
