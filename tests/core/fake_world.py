"""A simulated serving world for the rollout driver: a fake platform, store, MLflow and metrics.

Only what is outside our code is faked: the serving platform (which versions run, what traffic
split is applied, readiness), the status store, MLflow's tag API, and the predictors' /metrics
endpoints (served through `httpx.MockTransport`, so the real `ScrapeProvider` parses real
Prometheus text). The driver, the engine, the analysis, the provider and the history code are the
real ones. Faults are injected by name at chosen passes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx

from modelops import errors
from modelops.rollout.interface import Interface, Tensor
from modelops.rollout.state import Traffic

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
INTERFACE = Interface((Tensor("input", "FP32", (-1, 16)),), (Tensor("output", "FP32", (-1, 3)),))
RENAMED = Interface((Tensor("features", "FP32", (-1, 16)),), (Tensor("output", "FP32", (-1, 3)),))


class Crash(BaseException):
    """The driver's process dies here (its memory is dropped; the world goes on). Not an
    Exception: nothing in the driver may swallow it."""


@dataclass
class World:
    """Everything that survives a restart of the driver: what serves, the status, MLflow, counters."""

    rng: random.Random
    error_rate: dict[str, float] = field(default_factory=dict)  # version -> share of 500s (every 1/rate-th)
    refuse: set[str] = field(default_factory=set)  # versions that answer 400 to every request
    interfaces: dict[str, Interface] = field(default_factory=dict)
    serving: Traffic = Traffic(stable=None)  # what the platform applied
    running: set[str] = field(default_factory=set)  # predictors up
    ready: set[str] = field(default_factory=set)
    status: dict = field(default_factory=dict)  # the persisted status.canary
    tags: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # MLflow version tags
    aliases: dict[str, str] = field(default_factory=dict)
    counters: dict[tuple[str, str], float] = field(default_factory=dict)  # (version, code) -> count
    buckets: dict[tuple[str, str], float] = field(default_factory=dict)  # (version, le) -> count
    faults: set[str] = field(default_factory=set)  # active this pass
    saves: int = 0
    delivered: list[dict] = field(default_factory=list)  # notifications a receiver accepted
    labels: str = ""  # more labels on every sample, e.g. ',namespace="ns"' (as Prometheus adds them)
    # Shadow mirroring and the performance gate (issue 16):
    wrong: set[str] = field(default_factory=set)  # versions whose answers disagree with the stable's
    mirror: object = None  # the Mirror the platform was last told (None: off)
    mirror_calls: list = field(default_factory=list)  # every set_shadow argument, in order
    comparisons: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (stable, cand, outcome)
    diff_buckets: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (stable, cand, le)
    answered: dict[str, int] = field(default_factory=dict)  # client answers per version
    load_docs: dict[str, object] = field(default_factory=dict)  # version -> its load-test document
    load_test_passes: int = 2  # calls of performance_gate before a started test reports
    load_tests: dict[str, int] = field(default_factory=dict)  # test key -> calls since it started

    def traffic_pass(self, n: int = 60) -> None:
        """Client requests over one pass, split as the platform serves them."""
        t = self.serving
        if t.stable is None:
            return
        for _ in range(n):
            v = t.canary if t.canary and self.rng.random() * 100 < t.weight else t.stable
            if v not in self.ready:
                continue
            seen = sum(n for (u, _), n in self.counters.items() if u == v)
            every = round(1 / self.error_rate[v]) if self.error_rate.get(v) else 0
            code = "400" if v in self.refuse else ("500" if every and seen % every == 0 else "200")
            self.counters[(v, code)] = self.counters.get((v, code), 0) + 1
            self.answered[v] = self.answered.get(v, 0) + 1
            m = self.mirror
            if m is not None and v == m.stable and m.candidate in self.ready and self.rng.random() * 100 < m.percent:
                outcome = "disagree" if m.candidate in self.wrong else "agree"
                key = (m.stable, m.candidate, outcome)
                self.comparisons[key] = self.comparisons.get(key, 0) + 1
                for le in (("1", "5", "+Inf") if outcome == "disagree" else ("1e-06", "1e-05", "1", "5", "+Inf")):
                    k = (m.stable, m.candidate, le)
                    self.diff_buckets[k] = self.diff_buckets.get(k, 0) + 1
            if code == "200":
                for le in ("0.005", "0.01", "0.1", "+Inf"):
                    self.buckets[(v, le)] = self.buckets.get((v, le), 0) + 1

    def reset_counters(self, version: str) -> None:
        """The predictor restarted: its counters start from zero again."""
        for key in [k for k in self.counters if k[0] == version]:
            del self.counters[key]
        for key in [k for k in self.buckets if k[0] == version]:
            del self.buckets[key]

    def metrics_text(self, version: str) -> str:
        lines = ["# TYPE modelops_predictor_requests_total counter"]
        nan = "metric-nan" in self.faults
        for (v, code), n in sorted(self.counters.items()):
            if v == version:
                value = "NaN" if nan else f"{n}"
                lines.append(f'modelops_predictor_requests_total{{model="m",version="{v}",protocol="rest",'
                             f'code="{code}"{self.labels}}} {value}')
        lines.append("# TYPE modelops_predictor_request_seconds histogram")
        for (v, le), n in sorted(self.buckets.items()):
            if v == version:
                lines.append(f'modelops_predictor_request_seconds_bucket{{model="m",version="{v}",'
                             f'protocol="rest",le="{le}"{self.labels}}} {n}')
        lines.append("# TYPE modelops_shadow_comparisons_total counter")
        for (stable, cand, outcome), n in sorted(self.comparisons.items()):
            if stable == version:
                lines.append(f'modelops_shadow_comparisons_total{{model="m",version="{stable}",candidate="{cand}",'
                             f'outcome="{outcome}"{self.labels}}} {n}')
        lines.append("# TYPE modelops_shadow_abs_diff histogram")
        for (stable, cand, le), n in sorted(self.diff_buckets.items()):
            if stable == version:
                lines.append(f'modelops_shadow_abs_diff_bucket{{model="m",version="{stable}",candidate="{cand}",'
                             f'le="{le}"{self.labels}}} {n}')
        return "\n".join(lines) + "\n"

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            version = request.url.host.split(".")[0].removeprefix("v")
            if "metric-down" in self.faults:
                raise httpx.ConnectError("connection refused", request=request)
            if "metric-timeout" in self.faults:
                raise httpx.ReadTimeout("timed out", request=request)
            if "metric-5xx" in self.faults:
                return httpx.Response(503, text="unavailable")
            if "metric-empty" in self.faults or version not in self.running:
                return httpx.Response(200, text="")
            return httpx.Response(200, text=self.metrics_text(version))
        return httpx.MockTransport(handler)


class FakePlatform:
    """The `Platform` of the driver over a `World` (a new one after every restart)."""

    def __init__(self, world: World):
        self.world = world

    def canary_ready(self, traffic: Traffic) -> bool | None:
        return traffic.canary in self.world.ready if traffic.canary else None

    def interface(self, version: str):
        if "mlflow-down" in self.world.faults:
            raise errors.RegistryUnavailable("MLflow tracking server is unreachable (fake)")
        return self.world.interfaces.get(version)

    def apply(self, traffic: Traffic) -> None:
        if "apply-fails" in self.world.faults:
            raise errors.ServingError("the InferenceService write failed (fake)")
        if "apply-conflict" in self.world.faults:
            raise errors.ServingError("409 Conflict: the object has been modified (fake)")
        if "crash-after-save" in self.world.faults:
            raise Crash("after save, before apply")
        w = self.world
        w.serving = traffic
        want = {v for v in (traffic.stable, traffic.canary) if v}
        w.running = want
        w.ready = set(want)

    def set_shadow(self, mirror) -> None:
        if "shadow-fails" in self.world.faults:
            raise errors.ServingError("the mirror ConfigMap write failed (fake)")
        self.world.mirror_calls.append(mirror)
        self.world.mirror = mirror

    def performance_gate(self, test):
        """Starts the tests of `test.key` once; reports them after `load_test_passes` calls."""
        from modelops.rollout.actions import LoadTestResult

        w = self.world
        if "gate-unreadable" in w.faults:
            raise errors.ServingError("the load-test Job's termination message is not JSON (fake)")
        calls = w.load_tests[test.key] = w.load_tests.get(test.key, 0) + 1
        if calls < w.load_test_passes:
            return None
        return LoadTestResult(test.version, test.attempt, stable=w.load_docs.get(test.stable_version),
                              candidate=w.load_docs.get(test.version))

    def metrics_urls(self) -> list[str]:
        return [f"http://v{v}.predictor/metrics" for v in sorted(self.world.running)]


class FakeStore:
    def __init__(self, world: World):
        self.world = world

    def save(self, state, result) -> None:
        if "save-conflict" in self.world.faults:
            raise errors.ServingError("409 Conflict writing the status (fake)")
        if "crash-before-save" in self.world.faults:
            raise Crash("before save")
        self.world.status = state.to_status()
        self.world.saves += 1


class FakeMlflow:
    """MLflow's model-version tag and alias API, as `modelops.rollout.history` uses it."""

    def __init__(self, world: World):
        self.world = world

    def _up(self) -> None:
        if "mlflow-down" in self.world.faults:
            raise errors.RegistryUnavailable("MLflow tracking server is unreachable (fake)")
        if "crash-after-apply" in self.world.faults:
            raise Crash("after apply, before the history")

    def get_version_tags(self, name: str, version: str) -> dict[str, str]:
        self._up()
        return dict(self.world.tags.get((name, version), {}))

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        self._up()
        self.world.tags.setdefault((name, version), {}).update(tags)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._up()
        self.world.aliases[alias] = version

    def model_version_run_id(self, name: str, version: str) -> str | None:
        self._up()
        return None  # the fake's versions have no runs: the rollout report is only named in a tag

    def history(self, version: str) -> list[dict]:
        raw = self.world.tags.get(("m", version), {}).get("modelops.deployment.ns.md.history")
        return json.loads(raw) if raw else []


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
