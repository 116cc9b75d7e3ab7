"""KServe as the rollout driver's serving platform, and `status` as its store.

`modelops.rollout.driver.tick` decides and carries out a canary pass through a few methods; here
they are the InferenceService of one ModelDeployment:
- `canary_ready`: what KServe reports for the canary's predictor (Standard `canaryStatuses[]` or
  the `CanaryPredictorReady` condition; Knative the newest revision being the latest ready one);
- `interface`: what a converted version serves (its published record, else its conversion.json);
- `apply`: the InferenceService for a traffic split (Standard `spec.canary[]`, Knative
  `canaryTrafficPercent`), written only where it differs (`Reconciler.apply_service`);
- `set_shadow`: the mirror ConfigMap the stable predictor watches, and the candidate's Service
  (`judging.Judging`); `performance_gate`: the `modelops loadtest` Job of one gate attempt, read
  back from its termination message. A platform built without `judging` (nothing to write them
  with) raises `NotAvailableYet` for both: inconclusive, never a blind promotion.
The store writes the status (the rollout's state and what it implies: phase, conditions, `stable`,
`canaryModel`) in one patch before the InferenceService changes, so a restart between the two
resumes from what was decided, and a reader never sees a state half written.
"""

from __future__ import annotations

from typing import Callable

from modelops import errors
from modelops.deployment.facts import Served, ServiceObservation
from modelops.rollout.state import RolloutState, Traffic

from . import diffing


def canary_readiness(observed: dict | None) -> bool | None:
    """Whether KServe reports the canary's predictor ready; None when it says nothing (yet)."""
    if not observed:
        return None
    spec, status = observed.get("spec") or {}, observed.get("status") or {}
    canary = (spec.get("canary") or [None])[0]
    if canary is not None:
        name = (canary.get("predictor") or {}).get("name")
        entries = [c for c in status.get("canaryStatuses") or [] if c.get("name") == name]
        if entries:
            return bool(entries[0].get("ready"))
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == "CanaryPredictorReady"), None)
        return None if cond is None else cond.get("status") == "True"
    if (spec.get("predictor") or {}).get("canaryTrafficPercent") is not None:
        comp = (status.get("components") or {}).get("predictor") or {}
        created, ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
        return None if not created else created == ready
    return None


class Versions:
    """The converted versions one pass knows (stable, canary in progress, the new target)."""

    def __init__(self, stable: Served | None, canary: Served | None, target: Served | None):
        self.stable = stable
        self.by_version = {s.version: s for s in (stable, canary, target) if s is not None}
        self.fallback = stable or target  # what serves when the state names nothing we know

    def split(self, traffic: Traffic) -> tuple[Served, Served | None, int]:
        """(stable, canary, weight) the InferenceService must serve for `traffic`."""
        stable = self.by_version.get(traffic.stable) if traffic.stable else None
        canary = self.by_version.get(traffic.canary) if traffic.canary else None
        return stable or self.fallback, canary, traffic.weight if canary else 0


class KServePlatform:
    def __init__(self, versions: Versions, *, read_service: Callable[[], dict | None],
                 write_service: Callable[[Served, Served | None, int], tuple[ServiceObservation, bool]],
                 interface_of: Callable[[Served], object], judging=None):
        self.versions = versions
        self._judging = judging
        self._read = read_service
        self._write = write_service
        self._interface_of = interface_of
        self.observation: ServiceObservation | None = None  # after apply: what KServe reports
        self.changed = False
        self.error: BaseException | None = None  # apply's failure, re-raised by the caller

    def canary_ready(self, traffic: Traffic) -> bool | None:
        return canary_readiness(self._read())

    def interface(self, version: str):
        served = self.versions.by_version.get(version)
        return None if served is None else self._interface_of(served)

    def apply(self, traffic: Traffic) -> None:
        try:
            self.observation, self.changed = self._write(*self.versions.split(traffic))
        except Exception as exc:
            self.error = exc
            raise

    def set_shadow(self, mirror) -> None:
        if self._judging is None:
            if mirror is not None:
                raise errors.NotAvailableYet("spec.rollout.shadow: this platform cannot mirror to the candidate")
            return
        self._judging.set_shadow(mirror)

    def performance_gate(self, test):
        if self._judging is None:
            raise errors.NotAvailableYet("spec.rollout.performanceGate: this platform cannot run the load tests")
        return self._judging.performance_gate(test, canary_readiness(self._read()))


class StatusStore:
    """The ModelDeployment's status: `compose(state, result)` is the plan (the whole status and
    its Events) for a rollout state, written as one patch; `on_saved(plan, result)` runs once it is
    persisted (the operator posts the transitions' Events there) and says whether it emitted them."""

    def __init__(self, status: dict, compose: Callable, patch_status: Callable[[dict], None],
                 on_saved: Callable | None = None):
        self._status = status
        self._compose = compose
        self._patch = patch_status
        self._on_saved = on_saved
        self.saved: dict = status  # what is persisted now (the final status diff starts from it)
        self.wrote = False
        self.emitted = False

    def save(self, state: RolloutState, result) -> None:
        plan = self._compose(state, result)
        patch = diffing.status_patch(self._status, plan.status)
        if patch:
            self._patch(patch)
            self.wrote = True
        self.saved = plan.status
        if self._on_saved is not None:
            self.emitted = self._on_saved(plan, result)
