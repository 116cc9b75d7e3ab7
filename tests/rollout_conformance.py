"""One scripted rollout story, run through the one driver on every serving platform.

The story (simulated time, a pass every 15 s, analysis every 60 s):
1. v1 is the first version: it serves at once;
2. v2 is a good canary: promoted after its steps;
3. v3 answers 500 to 30% of requests: rolled back;
4. v4 starts; v5 arrives mid-canary and supersedes it; the rollout is paused (it must hold), then
   resumed and promoted by hand (the promote annotation);
5. v6 starts and is aborted by hand (the abort annotation).

An adapter puts one platform behind the driver: `FakeAdapter` (tests/core/fake_world.py),
`LocalAdapter` (local mode's `LocalPlatform` writing to a real router process) and `KServeAdapter`
(the operator's `KServePlatform` and status store, on the API-server emulator or the real control
plane; the adapter plays KServe's controller by reporting what it was given as ready). Each pass
the simulated clients send requests the way the platform *really* serves them (read back from
the router's table or the InferenceService), so a platform that applied the wrong split gives a
different story. `run_story` returns the transcript: the sequence of (phase, version, weight,
stable) the status went through, the notifications (Events and webhooks) in order, and the MLflow
history of every version. Every platform must give the same transcript.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import httpx

from fake_world import INTERFACE, FakeMlflow, FakePlatform, FakeStore, World, at

from modelops.deployment.facts import Served
from modelops.deployment.spec import parse_spec
from modelops.rollout.actions import ABORT_ANNOTATION, PROMOTE_ANNOTATION
from modelops.rollout.driver import AnalysisScope, Facts, tick
from modelops.rollout.engine import Notify
from modelops.rollout.history import RegistryHistory
from modelops.rollout.providers import ScrapeProvider
from modelops.rollout.state import RolloutState, Traffic

PASS = 15.0
VERSIONS = "123456"
SPEC_BODY = {
    "model": {"name": "m", "alias": "champion"},
    "rollout": {"strategy": "canary", "steps": [10, 50, 100], "interval": "60s", "promoteAlias": "production",
                "analysis": {"minRequests": 5, "failureLimit": 2, "inconclusiveLimit": 6,
                             "successRate": {"min": 0.95}}},
}
SPEC = parse_spec(SPEC_BODY)
PAUSED = parse_spec({**SPEC_BODY, "rollout": {**SPEC_BODY["rollout"], "paused": True}})
REPORT = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
          "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]}


def served(version: str) -> Served:
    return Served(version=version, onnx_uri=f"mlflow-artifacts:/m/{version}/onnx",
                  storage_uri=f"s3://models/m/{version}", sha256=f"{int(version):064x}",
                  options=SPEC.conversion.fingerprint, interface=REPORT)


class Registry(FakeMlflow):
    """MLflow's tag API (fake_world) plus the conversion records the operator reads interfaces from."""

    def load_json(self, uri: str) -> dict:
        self._up()
        return REPORT


@dataclass
class Transcript:
    states: list = field(default_factory=list)  # (phase, version, weight, stable) on every change
    notifications: list = field(default_factory=list)  # (event, version) in order
    history: dict = field(default_factory=dict)  # version -> [{state, at, ...}]
    aliases: dict = field(default_factory=dict)
    passes: int = 0


class FakeAdapter:
    """The fake platform: the reference every other platform is compared with."""

    name = "fake"

    def __init__(self, world: World):
        self.world = world

    def load(self) -> RolloutState:
        return RolloutState.from_status(self.world.status)

    def tick(self, state, spec, facts, provider, now, history):
        result = tick(state, spec, facts, platform=FakePlatform(self.world), store=FakeStore(self.world),
                      provider=provider, scope=AnalysisScope("m", "ns"), now=now, history=history)
        return result.state, [a.notification for a in result.actions if isinstance(a, Notify)]

    def serving(self) -> Traffic:
        return self.world.serving

    def close(self) -> None:
        pass


class _Story:
    """The script: which target, spec and annotations each pass has, from the state so far."""

    def __init__(self):
        self.stage = 1
        self.held = 0  # passes held while paused
        self.paused_at = None
        self.aborted = 0

    def facts(self, s: RolloutState):
        target, spec, annotations = None, SPEC, {}
        if self.stage == 1:
            target = "1"
            if s.stable_version == "1":
                self.stage = 2
        if self.stage == 2:
            target = "2"
            if s.stable_version == "2":
                self.stage = 3
        if self.stage == 3:
            target = "3"
            if s.rolled_back is not None and s.rolled_back.version == "3":
                self.stage = 4
        if self.stage == 4:
            target = "4"
            if s.phase.active and s.version == "4" and s.weight >= 10:
                self.stage = 5
        if self.stage == 5:
            target = "5"
            if s.phase.active and s.version == "5":
                self.stage = 6
        if self.stage == 6:  # paused: the canary must hold where it is
            target, spec = "5", PAUSED
            if self.paused_at is None:
                self.paused_at = (s.version, s.weight)
            assert (s.version, s.weight) == self.paused_at, f"a paused rollout moved: {self.paused_at} -> {s}"
            self.held += 1
            if self.held > 6:
                self.stage = 7
        if self.stage == 7:
            target, annotations = "5", {PROMOTE_ANNOTATION: "5"}
            if s.stable_version == "5":
                self.stage = 8
        if self.stage == 8:
            target = "6"
            if s.phase.active and s.version == "6":
                self.stage = 9
        if self.stage == 9:
            target, annotations = "6", {ABORT_ANNOTATION: "6"}
            if s.rolled_back is not None and s.rolled_back.version == "6":
                self.aborted += 1
                if self.aborted > 3:
                    self.stage = 10
        return target, spec, annotations


def run_story(make_adapter, max_passes: int = 160) -> Transcript:
    """Run the story on the platform `make_adapter(world)` builds; return its transcript."""
    world = World(rng=random.Random(7), error_rate={"3": 0.3}, interfaces={v: INTERFACE for v in VERSIONS})
    mlflow = Registry(world)
    adapter = make_adapter(world)
    clock = [0.0]
    provider = ScrapeProvider([], client=httpx.Client(transport=world.transport()), max_age=0,
                              clock=lambda: clock[0])
    history = RegistryHistory(mlflow, "m", "ns", "md", promote_alias="production")
    story, out = _Story(), Transcript()
    try:
        for p in range(max_passes):
            clock[0] = p * PASS
            serving = adapter.serving()
            world.serving = serving
            world.running = world.ready = {v for v in (serving.stable, serving.canary) if v}
            world.traffic_pass()
            provider.set_targets([f"http://v{v}.predictor/metrics" for v in sorted(world.running)])
            try:
                provider.scrape()
            except httpx.HTTPError:
                pass
            state = adapter.load()
            target, spec, annotations = story.facts(state)
            if story.stage == 10:
                break
            new, notes = adapter.tick(state, spec, Facts(target=target, generation=1, annotations=annotations),
                                      provider, at(p * PASS), history)
            line = (new.phase.value, new.version, new.weight, new.stable_version)
            if not out.states or out.states[-1] != line:
                out.states.append(line)
            out.notifications += [(n.event, n.version) for n in notes]
            out.passes = p
    finally:
        adapter.close()
        provider.close()
    assert story.stage == 10, f"the story stopped at stage {story.stage} after {max_passes} passes"
    for (_, version), tags in sorted(world.tags.items()):
        raw = next((v for k, v in tags.items() if k.endswith(".history")), None)
        out.history[version] = json.loads(raw) if raw else []
    out.aliases = dict(world.aliases)
    return out


EXPECTED_NOTIFICATIONS = [
    ("Started", "2"), ("StepAdvanced", "2"), ("StepAdvanced", "2"), ("Promoted", "2"),
    ("Started", "3"), ("Failed", "3"), ("RolledBack", "3"),
    ("Started", "4"), ("Started", "5"), ("Promoted", "5"),
    ("Started", "6"), ("RolledBack", "6"),
]


def check_story(t: Transcript) -> None:
    """What the story must show on any platform (so that equal transcripts cannot be equally wrong)."""
    assert t.notifications == EXPECTED_NOTIFICATIONS
    assert ("Paused", "5", 10, "2") in t.states
    assert t.states[-1] == ("RolledBack", None, 0, "5")
    assert t.aliases == {"production": "5"}
    states = {v: [h["state"] for h in entries] for v, entries in t.history.items()}
    assert states["2"] == ["canary 10%", "canary 50%", "canary 100%", "promoted", "replaced by v5"]
    assert states["3"] == ["canary 10%", "rolled back"] and states["6"] == ["canary 10%", "rolled back"]
    assert states["5"] == ["canary 10%", "promoted"]


class LocalAdapter:
    """Local mode's `LocalPlatform` over a real router process; every version's predictor is
    ready (a slot with its converted directory), so what differs is only the platform code."""

    name = "local"

    def __init__(self, world: World, tmp_path):
        import subprocess
        import sys
        import time

        from modelops.local.ports import free_port
        from modelops.local.predictors import Predictors, Slot
        from modelops.local.local_platform import LocalPlatform

        self.world = world
        port, admin = free_port(), free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "modelops.local.router", "--port", str(port),
                                      "--admin-port", str(admin)], stdout=subprocess.DEVNULL,
                                     stderr=open(tmp_path / "router.log", "wb"))
        self.admin = f"http://127.0.0.1:{admin}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.admin}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, (tmp_path / "router.log").read_text()
            time.sleep(0.1)
        predictors = Predictors(logs=tmp_path, name="md", device="cpu", grpc=False, convert=None,
                                record=lambda *a, **k: None, forget=lambda role: None, say=lambda line: None,
                                log_event=lambda *a, **k: None)
        for i, v in enumerate(VERSIONS):
            d = tmp_path / f"v{v}"
            d.mkdir()
            (d / "conversion.json").write_text(json.dumps(REPORT))
            predictors.slots[v] = Slot(version=v, state="ready", onnx_dir=d, served=served(v).to_status(),
                                       port=20000 + i)
        self.ports = {20000 + i: v for i, v in enumerate(VERSIONS)}
        self.platform = LocalPlatform(predictors, self.admin)
        self.status: dict = {}

    def load(self) -> RolloutState:
        return RolloutState.from_status(self.status)

    def tick(self, state, spec, facts, provider, now, history):
        adapter = self

        class Store:  # local mode's status document (status.json)
            def save(self, state, result):
                adapter.status = state.to_status()

        result = tick(state, spec, facts, platform=self.platform, store=Store(), provider=provider,
                      scope=AnalysisScope("m"), now=now, history=history)
        assert result.apply_error is None, result.apply_error
        return result.state, [a.notification for a in result.actions if isinstance(a, Notify)]

    def serving(self) -> Traffic:
        """What the router really routes (its admin API), as a traffic split."""
        routes = httpx.get(f"{self.admin}/routes", timeout=5).json()["routes"]
        live = [(self.ports[int(r["url"].rsplit(":", 1)[1])], r["weight"]) for r in routes]
        if not live:
            return Traffic(stable=None)
        if len(live) == 1:
            return Traffic(stable=live[0][0])
        (stable, _), (canary, weight) = live
        return Traffic(stable=stable, canary=canary, weight=weight)

    def close(self) -> None:
        self.platform.close()
        self.proc.terminate()
        self.proc.wait(10)


class KServeAdapter:
    """The operator's `KServePlatform` and status store (`Reconciler.rollout_parts`) and its
    driver pass (`rollout.step_deployment`) on an API server; the adapter plays KServe's
    controller: after each pass it reports the InferenceService's predictors ready."""

    name = "kserve"

    def __init__(self, world: World, kube, namespace: str, name: str = "m"):
        from modelops_operator.config import OperatorConfig
        from modelops_operator.kube import MODELDEPLOYMENTS
        from modelops_operator.reconciler import Reconciler

        self.world, self.kube, self.ns, self.name = world, kube, namespace, name
        world.labels = f',namespace="{namespace}"'  # the operator's analysis selects its namespace
        self.config = OperatorConfig(tracking_uri="http://mlflow.invalid")
        self.reconciler = Reconciler(self.config, kube, converter=None)
        self.registry = Registry(world)
        self.md_path = MODELDEPLOYMENTS.path(namespace, name)
        kube.create(MODELDEPLOYMENTS.path(namespace), {
            "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": SPEC_BODY})

    def _md(self) -> dict:
        return self.kube.get(self.md_path)

    def load(self) -> RolloutState:
        return RolloutState.from_status((self._md().get("status") or {}).get("canary"))

    def tick(self, state, spec, facts, provider, now, history):
        from modelops.deployment.facts import Inputs
        from modelops.rollout.state import format_time
        from modelops_operator import rollout

        md = self._md()
        md["metadata"]["annotations"] = dict(facts.annotations or {})
        status = md.get("status") or {}
        target = served(facts.target) if facts.target else None
        inputs = Inputs(generation=int(md["metadata"].get("generation") or 1), spec=spec, status=status,
                        now=format_time(now), resolved_version=facts.target)
        platform, store, _ = self.reconciler.rollout_parts(md, spec, self.registry, inputs, target)
        step = rollout.step_deployment(md, spec, status, target, self.config, now=format_time(now),
                                       platform=platform, store=store, history=history, provider=provider)
        # What the store persisted before the InferenceService write is already a whole status:
        # the top-level phase agrees with the rollout state (a reader never sees one half-written).
        persisted = self._md().get("status") or {}
        new = RolloutState.from_status(step.state)
        assert persisted.get("canary") == step.state
        if new.phase.active:
            assert persisted.get("phase") == "Progressing", persisted.get("phase")
        self._report_ready()
        return new, list(step.notifications)

    def _isvc(self) -> dict | None:
        from modelops_operator.kube import INFERENCESERVICES

        return self.kube.get(INFERENCESERVICES.path(self.ns, self.name))

    def _report_ready(self) -> None:
        """KServe's part: every predictor of the current generation is up."""
        from modelops_operator.kube import INFERENCESERVICES

        isvc = self._isvc()
        if isvc is None:
            return
        canaries = isvc["spec"].get("canary") or []
        self.kube.merge_patch(INFERENCESERVICES.path(self.ns, self.name, "status"), {"status": {
            "observedGeneration": isvc["metadata"]["generation"], "url": f"http://{self.name}.{self.ns}.example.com",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "canaryStatuses": [{"name": c["predictor"]["name"], "ready": True, "trafficPercent": c["trafficPercent"]}
                               for c in canaries]}})

    def serving(self) -> Traffic:
        """What the InferenceService really serves (its spec), as a traffic split."""
        isvc = self._isvc()
        if isvc is None:
            return Traffic(stable=None)
        by_uri = {served(v).storage_uri: v for v in VERSIONS}
        stable = by_uri[isvc["spec"]["predictor"]["model"]["storageUri"]]
        canary = (isvc["spec"].get("canary") or [None])[0]
        if canary is None:
            return Traffic(stable=stable)
        return Traffic(stable=stable, canary=by_uri[canary["predictor"]["model"]["storageUri"]],
                       weight=canary["trafficPercent"])

    def close(self) -> None:
        pass
