"""The APIs `bench_operator.py` runs against: kmock's emulator (the one the tests use), timed, and
the real control plane of ../shared/k8s, watched. Each says when an object's InferenceService
appeared and when its status was written, and creates ModelDeployments."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import kmock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.k8s.apiserver import ISVC, MD, ApiServerEmulator  # noqa: E402  (the emulator the tests use)


class TimedEmulator(ApiServerEmulator):
    """Records when each InferenceService create request arrives.

    kmock matches every request against the history of all earlier requests (its DSL filters
    are views over that history), which makes a long run quadratic. The benchmark needs no
    history, so it is dropped: the emulator then costs the same per request at any scale.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.isvc_created: dict[str, float] = {}
        self.md_observed: dict[str, float] = {}  # status written for the object's generation
        self.md_ready: dict[str, float] = {}  # status phase Ready
        self.md_watched = False

    async def _handle(self, request):
        self._requests[:] = [request]
        if request.action == kmock.action.CREATE and request.resource == kmock.resource(ISVC):
            self.isvc_created.setdefault(request.data["metadata"]["name"], time.perf_counter())
        if request.action == kmock.action.WATCH and request.resource == kmock.resource(MD):
            self.md_watched = True
        try:
            return await super()._handle(request)
        finally:
            if request.action == kmock.action.UPDATE and request.resource == kmock.resource(MD) \
                    and request.subresource == "status" and request.name:
                note_status(self.get(MD, request.namespace, request.name) or {}, self.md_observed, self.md_ready)


def note_status(obj: dict, observed: dict[str, float], ready: dict[str, float]) -> None:
    """Record when a ModelDeployment first had a status for its generation, and first was Ready."""
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    if meta.get("name") and status.get("observedGeneration") == meta.get("generation"):
        observed.setdefault(meta["name"], time.perf_counter())
        if status.get("phase") == "Ready":
            ready.setdefault(meta["name"], time.perf_counter())


def ready_status(generation: int, name: str) -> dict:
    """The status KServe writes once an InferenceService serves."""
    return {"status": {"url": f"http://{name}.bench.example.com", "observedGeneration": generation,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def md(name: str, model: str, version: str) -> dict:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"model": {"name": model, "version": version}}}


async def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.002)


class EmulatorBackend:
    name = "emulator"

    async def __aenter__(self):
        self.api = TimedEmulator()
        await self.api.__aenter__()
        self.server = kmock.Server(self.api)
        await self.server.__aenter__()
        self.url = str(self.api.url).rstrip("/")
        self.client = httpx.AsyncClient(base_url=self.url)
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self.server.__aexit__(*exc)
        await self.api.__aexit__(*exc)

    def operator_args(self) -> tuple[list[str], dict]:
        return ["--api-url", self.url], {}

    @property
    def isvc_created(self) -> dict[str, float]:
        return self.api.isvc_created

    @property
    def md_observed(self) -> dict[str, float]:
        return self.api.md_observed

    @property
    def md_ready(self) -> dict[str, float]:
        return self.api.md_ready

    def play_kserve(self, enabled: bool) -> None:
        self.kserve = enabled

    def request_counts(self) -> None:  # kmock keeps no counts (the benchmark drops its history)
        return None

    async def mark_ready(self, name: str) -> None:
        isvc = self.api.get(ISVC, "bench", name)
        r = await self.client.patch(f"/apis/serving.kserve.io/v1beta1/namespaces/bench/inferenceservices/{name}/status",
                                    json=ready_status(isvc["metadata"]["generation"], name),
                                    headers={"Content-Type": "application/merge-patch+json"})
        r.raise_for_status()

    async def ready(self) -> None:
        await wait_for(lambda: self.api.md_watched, timeout=120)
        await asyncio.sleep(1)

    async def create(self, body: dict) -> None:
        r = await self.client.post("/apis/modelops.dev/v1alpha1/namespaces/bench/modeldeployments", json=body)
        r.raise_for_status()


class RealBackend:
    """The real kube-apiserver + etcd + controller-manager of ../shared/k8s, on its own port."""

    name = "real"

    async def __aenter__(self):
        os.environ.setdefault("MODELOPS_K8S_DIR", tempfile.mkdtemp(prefix="bench-k8s-"))
        os.environ.setdefault("MODELOPS_K8S_PORT", "6543")
        from tests.sharedenv import SHARED, start_control_plane

        self.cp, self.started = start_control_plane()
        self.cp.kubectl("apply", "--server-side", "-f", str(SHARED / "kserve-crds"))
        self.cp.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests/crds/modeldeployments.modelops.dev.yaml"))
        self.cp.wait_established("inferenceservices.serving.kserve.io", "modeldeployments.modelops.dev")
        self.cp.kubectl("create", "namespace", "bench")
        from kubernetes import client, config, watch

        cfg = client.Configuration()
        config.load_kube_config(config_file=self.cp.kubeconfig, client_configuration=cfg, persist_config=False)
        cfg.connection_pool_maxsize = 32
        self.api = client.CustomObjectsApi(client.ApiClient(cfg))
        self.isvc_created: dict[str, float] = {}
        self.md_observed: dict[str, float] = {}
        self.md_ready: dict[str, float] = {}
        self.kserve = None  # ThreadPoolExecutor playing KServe, when enabled
        self.watch = watch.Watch()
        self.md_watch = watch.Watch()
        self.stopping, self.watch_restarts = False, 0
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()
        self.md_watcher = threading.Thread(target=self._watch_mds, daemon=True)
        self.md_watcher.start()
        return self

    def _follow(self, w, plural_args: tuple, on_event) -> None:
        """Run a watch until `__aexit__`; a stream that ends or drops (the API server under a burst
        closes watches) is listed and watched again: ADDED events replay, first times are kept."""
        while not self.stopping:
            try:
                for event in w.stream(self.api.list_namespaced_custom_object, *plural_args, timeout_seconds=3600):
                    on_event(event)
            except Exception as exc:
                if not self.stopping:
                    self.watch_restarts += 1
                    print(f"watch {plural_args[-1]} dropped ({type(exc).__name__}); watching again", file=sys.stderr)
                    time.sleep(0.2)

    def _watch(self) -> None:
        def on_event(event):
            if event["type"] == "ADDED":
                meta = event["object"]["metadata"]
                if meta["name"] not in self.isvc_created:
                    self.isvc_created[meta["name"]] = time.perf_counter()
                    if self.kserve is not None:
                        self.kserve.submit(self._mark_ready, meta["name"], meta["generation"])
        self._follow(self.watch, ("serving.kserve.io", "v1beta1", "bench", "inferenceservices"), on_event)

    def _watch_mds(self) -> None:
        def on_event(event):
            if event["type"] in ("ADDED", "MODIFIED"):
                note_status(event["object"], self.md_observed, self.md_ready)
        self._follow(self.md_watch, ("modelops.dev", "v1alpha1", "bench", "modeldeployments"), on_event)

    def play_kserve(self, enabled: bool) -> None:
        self.kserve = ThreadPoolExecutor(8) if enabled else None

    def _mark_ready(self, name: str, generation: int) -> None:
        self.api.patch_namespaced_custom_object_status("serving.kserve.io", "v1beta1", "bench", "inferenceservices",
                                                       name, ready_status(generation, name))

    async def mark_ready(self, name: str) -> None:  # the ISVC watch does it
        pass

    def request_counts(self) -> dict[str, float]:
        """The API server's own count of the requests it served so far, by verb and resource
        (`apiserver_request_total`), so a burst can say how many requests each object cost."""
        from prometheus_client.parser import text_string_to_metric_families

        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(self.cp.kubectl("get", "--raw", "/metrics").stdout):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                if sample.name != "apiserver_request_total":
                    continue
                labels = sample.labels
                key = f"{labels.get('verb', '')} {labels.get('resource', '')}" + (
                    f"/{labels['subresource']}" if labels.get("subresource") else "")
                counts[key] = counts.get(key, 0.0) + sample.value
        return counts

    async def __aexit__(self, *exc):
        self.stopping = True
        self.watch.stop()
        self.md_watch.stop()
        if self.kserve is not None:
            self.kserve.shutdown(wait=False, cancel_futures=True)
        if self.started:
            from tests.sharedenv import stop_control_plane

            stop_control_plane(self.cp)

    def operator_args(self) -> tuple[list[str], dict]:
        return [], {"KUBECONFIG": self.cp.kubeconfig}

    async def ready(self) -> None:
        # The operator is up once it has reconciled a first object end to end.
        await self.create(md("warm-up", *self.model))
        await wait_for(lambda: "warm-up" in self.isvc_created, timeout=180)

    async def create(self, body: dict) -> None:
        await asyncio.to_thread(self.api.create_namespaced_custom_object, "modelops.dev", "v1alpha1",
                                "bench", "modeldeployments", body)
