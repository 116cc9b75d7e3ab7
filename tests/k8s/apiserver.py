"""kmock's KubernetesEmulator plus the few API-server behaviours the operator relies on.

The emulator stores objects as plain JSON. A real API server also: assigns `uid`,
`creationTimestamp` and `generation` on create; bumps `generation` when the spec changes;
ignores status changes on the main resource and everything but status on `/status`; and garbage-
collects objects whose owner is gone. Those are emulated here (the kmock docs invite subclassing
for such "special" treatment); schema validation and resourceVersion checks are not.
"""

from __future__ import annotations

import datetime
import itertools
import uuid

import kmock
from kmock._internal import dicts  # the emulator's own merge-patch function

MD = "modelops.dev/v1alpha1/modeldeployments"
ISVC = "serving.kserve.io/v1beta1/inferenceservices"
WITH_STATUS = {"modeldeployments", "inferenceservices", "jobs"}
_rv = itertools.count(1)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServerEmulator(kmock.KubernetesEmulator):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.resources[MD] = kmock.ResourceInfo(
            kind="ModelDeployment", singular="modeldeployment", namespaced=True, shortnames={"md"},
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"})
        self.resources[ISVC] = kmock.ResourceInfo(
            kind="InferenceService", singular="inferenceservice", namespaced=True, shortnames={"isvc"},
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"})

    async def _handle(self, request):
        if request.resource is not None and isinstance(request.data, dict):
            self._admit(request)
        try:
            return await super()._handle(request)
        finally:
            if request.resource is not None and request.action in (kmock.action.DELETE, kmock.action.UPDATE):
                await self._collect_garbage()

    def _admit(self, request) -> None:
        data = request.data
        if request.action == kmock.action.CREATE:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["generation"] = 1
            meta["resourceVersion"] = str(next(_rv))
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
        elif request.action == kmock.action.UPDATE and request.name:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return
            current = self.objects[key].raw
            if request.subresource == "status":
                for k in list(data):
                    if k != "status":
                        del data[k]
                return
            if request.resource.plural in WITH_STATUS:
                data.pop("status", None)
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(_rv))
            if "spec" in data:
                new_spec = dicts.patch_dict(current.get("spec") or {}, data["spec"])
                if new_spec != current.get("spec"):
                    meta["generation"] = int(current["metadata"].get("generation", 1)) + 1

    async def _collect_garbage(self) -> None:
        """Delete dependents of deleted owners (the API server's garbage collector)."""
        while True:
            live_uids = {obj.raw["metadata"].get("uid") for obj in self.objects.values() if not obj.deleted}
            orphans = [
                (key, obj) for key, obj in self.objects.items() if not obj.deleted
                and (refs := obj.raw.get("metadata", {}).get("ownerReferences"))
                and not any(ref.get("uid") in live_uids for ref in refs)
            ]
            if not orphans:
                return
            async with self._lock:
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    # --- test helpers -----------------------------------------------------------------------
    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def writes(self, resource: str | None = None) -> list:
        """Modifying requests served so far (optionally for one resource)."""
        res = kmock.resource(resource) if resource else None
        return [r for r in self if r.method in (kmock.method.POST, kmock.method.PATCH, kmock.method.PUT,
                                                kmock.method.DELETE)
                and (res is None or r.resource == res)]
