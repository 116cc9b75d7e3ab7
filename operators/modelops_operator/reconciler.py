"""One reconcile pass of a ModelDeployment: gather facts, plan, act, write status if changed.

Synchronous on purpose (MLflow's client and the in-process converter block); Kopf handlers run it
in a worker thread. Every decision is `modelops.deployment.plan.plan`; this module only fetches
facts and executes the planned actions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

from modelops import errors
from modelops.deployment.facts import ApplyService, Convert, Event, Failure, Inputs, Plan, Served, ServiceObservation
from modelops.deployment.plan import now_rfc3339, plan, plan_invalid, plan_rollout
from modelops.deployment.spec import DeploymentSpec, parse_spec
from modelops.resolve_cache import ResolveCache

from modelops.rollout.history import RegistryHistory

from . import access, builders, diffing, judging, rollout
from .config import OperatorConfig
from .kserve_platform import KServePlatform, StatusStore, Versions
from .kube import INFERENCESERVICES, MODELDEPLOYMENTS, Kube

log = logging.getLogger("modelops.operator")


@dataclass(frozen=True)
class Result:
    body: dict | None = None  # the ModelDeployment as reconciled (for Events)
    events: tuple[Event, ...] = ()
    retry: Failure | None = None  # retryable: back off and try again
    stalled: Failure | None = None  # permanent: do not retry this generation
    wrote: tuple[str, ...] = ()  # what was written (for logs and tests)
    deliveries: object = None  # rollout.Deliveries: webhook notifications still owed
    phase: str | None = None  # the phase the status now says (metrics: a RolledBack canary)
    rollout: object = None  # rollout.StepResult of a canary pass (metrics: weight, transitions, analyses)


def service_observation(observed: dict, changed: bool) -> ServiceObservation:
    """Readiness as KServe reports it, for the generation we last wrote."""
    status = observed.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    generation = observed.get("metadata", {}).get("generation")
    current = status.get("observedGeneration") in (None, generation)
    is_ready = not changed and current and ready.get("status") == "True"
    uri = observed.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")
    message = "" if is_ready else (ready.get("message") or "waiting for KServe")
    return ServiceObservation(storage_uri=uri, ready=is_ready, url=status.get("url"), message=message)


class Reconciler:
    def __init__(self, config: OperatorConfig, kube: Kube, converter, registry_factory=None,
                 emit: Callable[[dict, tuple[Event, ...]], None] | None = None):
        self.config = config
        self.kube = kube
        self.converter = converter
        self._registry_factory = registry_factory
        self._registries: dict[str, object] = {}
        self._interfaces: dict[tuple[str, str], object] = {}  # (onnx URI, sha256) -> Interface
        self._own_writes: dict[tuple[str, str], tuple] = {}  # InferenceService -> (resourceVersion, status) we wrote
        self.resolves = ResolveCache(config.resolve_max_age)  # one MLflow look-up per model a second
        # Posts Events at once (`handlers.post_events`): a rollout transition's Events go out right
        # after the status that records it, not after the whole pass. None: they go with the Result.
        self.emit = emit

    # --- facts ------------------------------------------------------------------------------
    def registry_for(self, spec: DeploymentSpec):
        uri = spec.registry.tracking_uri or self.config.tracking_uri
        if not uri:
            raise errors.InvalidSpec("spec.registry.trackingUri",
                                     "no MLflow tracking URI: set it here or MODELOPS_MLFLOW_TRACKING_URI")
        if uri not in self._registries:
            if self._registry_factory is not None:
                self._registries[uri] = self._registry_factory(uri)
            else:
                from modelops.registry import Registry

                self._registries[uri] = Registry(uri)
        return self._registries[uri]

    def apply_service(self, md: dict, spec: DeploymentSpec, served, canary=None,
                      weight: int = 0) -> tuple[ServiceObservation, bool]:
        """Make the InferenceService match; write only what differs, under its resourceVersion
        (KServe's controller writes the same object: a conflict is re-read and retried)."""
        desired = builders.build_inference_service(md, spec, served, runtime=self.config.runtime,
                                                   canary=canary, weight=weight)
        access.decorate_inference_service(desired, spec, self.config)
        judging.decorate_inference_service(desired, spec)
        access.apply_access(self.kube, md, spec, self.config)  # its ServiceAccount first: Pods need it
        ns, name = md["metadata"]["namespace"], md["metadata"]["name"]
        body = {k: desired[k] for k in ("metadata", "spec")}

        def diff(observed: dict) -> dict | None:
            first = builders.knative_rollback_first_step(observed, desired)
            if first is not None:
                return first
            patch = diffing.merge_patch(observed, body, diffing.IS_OWNED_MAPS) or {}
            return diffing.deep_merge(patch, diffing.drop_owned_absent(body, observed, diffing.IS_OWNED_MAPS))

        # Nothing served yet (a new ModelDeployment): create without a read first.
        first = not (md.get("status") or {}).get("stable")
        observed, changed = self.kube.apply_merge(INFERENCESERVICES.path(ns, name), INFERENCESERVICES.path(ns),
                                                  desired, diff, create_first=first)
        if changed:
            self._own_writes[(ns, name)] = ((observed.get("metadata") or {}).get("resourceVersion"),
                                            observed.get("status") or {})
        return service_observation(observed, changed=changed), changed

    def own_write(self, namespace: str, name: str, resource_version: str | None, status) -> bool:
        """Whether this InferenceService state is the one this process last wrote (the watch
        event of our own create or patch: the same resourceVersion and the same status): a pass
        on it would learn nothing the writing pass did not already plan on. KServe's status
        updates and anyone else's writes are new."""
        return resource_version is not None and \
            self._own_writes.get((namespace, name)) == (resource_version, dict(status or {}))

    def interface_of(self, registry, served: Served):
        """What a converted version serves: from its published record, else its conversion.json
        in MLflow (read once per ONNX artifact: it never changes)."""
        from modelops.rollout.interface import from_report

        key = (served.onnx_uri, served.sha256)
        if key not in self._interfaces:
            found = from_report(served.interface) if served.interface else None
            if found is None and served.onnx_uri:
                found = from_report(registry.load_json(served.onnx_uri.rstrip("/") + "/conversion.json"))
            if found is None:
                return None
            self._interfaces[key] = found
        return self._interfaces[key]

    def rollout_parts(self, md: dict, spec: DeploymentSpec, registry, inputs: Inputs,
                      target: Served | None) -> tuple[KServePlatform, StatusStore, RegistryHistory]:
        """The driver's platform (this InferenceService), store (this status) and history (MLflow).
        The InferenceService is read once: the canary's readiness, and what the status persisted
        before the write says of it."""
        ns, name = md["metadata"]["namespace"], md["metadata"]["name"]
        status = inputs.status
        versions = Versions(Served.from_status(status.get("stable")), Served.from_status(status.get("canaryModel")),
                            target)
        observed = self.kube.get(INFERENCESERVICES.path(ns, name))
        before = service_observation(observed, changed=False) if observed else \
            ServiceObservation(storage_uri=None, ready=False, message="waiting for the InferenceService")
        platform = KServePlatform(
            versions, read_service=lambda: observed,
            write_service=lambda stable, canary, weight: self.apply_service(md, spec, stable, canary, weight),
            interface_of=lambda served: self.interface_of(registry, served),
            judging=judging.Judging(self.kube, md, spec, image=self.config.converter_image))

        def compose(state, result) -> Plan:  # the status for `state`, as KServe reported before the write
            stable, canary, _ = versions.split(state.traffic)
            return self._status_plan(inputs, before, stable, canary, state.to_status(), rollout.notifications_of(result),
                                     promoted=rollout.promoted_in(result, versions.stable, stable))

        def saved(plan: Plan, result) -> bool:  # a transition's Events go out once its status is persisted
            if self.emit is None or not rollout.notifications_of(result):
                return False
            self.emit(md, plan.events)
            return True

        store = StatusStore(status, compose, lambda patch: self.kube.merge_patch(
            MODELDEPLOYMENTS.path(ns, name, "status"), {"status": patch}), on_saved=saved)
        history = RegistryHistory(registry, spec.model.name, ns, name, promote_alias=spec.rollout.promote_alias)
        return platform, store, history

    @staticmethod
    def _status_plan(inputs: Inputs, observation: ServiceObservation, stable: Served, canary: Served | None,
                     state: dict, notifications: tuple = (), promoted: bool = False) -> Plan:
        """Status and Events of a canary deployment; a failure with the newest version is still said."""
        p = plan_rollout(replace(inputs, service=observation), stable, canary, state, notifications,
                         promoted=promoted)
        if inputs.error is not None:
            failed = plan(replace(inputs, service=observation))
            p = replace(p, retry=failed.retry)
            if failed.status.get("phase") == "Failed":
                p.status.update(phase="Failed", failed=failed.status.get("failed"))
                p.status["conditions"] = [c for c in failed.status["conditions"]] + \
                    [c for c in p.status["conditions"] if c["type"] in ("Progressing", "RolledBack")]
        return p

    # --- the pass ---------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str, *, resolve: bool) -> Result:
        md = self.kube.get(MODELDEPLOYMENTS.path(namespace, name))
        if md is None or md["metadata"].get("deletionTimestamp"):
            return Result()  # gone or going: the owner reference cleans up the rest
        generation = int(md["metadata"].get("generation") or 1)
        status = md.get("status") or {}
        now = now_rfc3339()
        try:
            spec = parse_spec(md.get("spec"))
            access.check_available(spec, self.config)
            judging.check_supported(spec, access.effective_auth(spec, self.config))
            registry = self.registry_for(spec)
        except errors.InvalidSpec as exc:
            failure = Failure.from_error(exc)
            return self._finish(md, plan_invalid(status, generation, failure, now), (), stalled=failure)

        inputs = Inputs(generation=generation, spec=spec, status=status, now=now)
        canary_model = Served.from_status(status.get("canaryModel"))
        resolved = None
        if resolve:
            try:
                resolved = self.resolves.resolve(registry, spec.model.name, version=spec.model.version,
                                                 alias=spec.model.alias)
                inputs = replace(inputs, resolved_version=resolved.version)
            except errors.ModelOpsError as exc:
                inputs = replace(inputs, error=Failure.from_error(exc))
        # The canary in progress is the converted target: no conversion look-up for it.
        target_version = inputs.resolved_version or status.get("resolvedVersion")
        if canary_model is not None and canary_model.version == target_version and \
                canary_model.options == spec.conversion.fingerprint:
            inputs = replace(inputs, conversion=canary_model)

        wrote: list[str] = []
        stepped = None
        done: set[type] = set()
        while True:
            p = plan(inputs)
            action = next((a for a in p.actions if type(a) not in done), None)
            if action is None:
                break
            done.add(type(action))
            if isinstance(action, Convert):
                inputs = self._convert(md, spec, registry, resolved, inputs)
            elif isinstance(action, ApplyService) and spec.rollout.strategy == "canary":
                target = None if inputs.error is not None else action.served
                p, changed, stepped = self._rollout(md, spec, registry, inputs, target)
                if changed:
                    wrote.append("inferenceservice")
                break
            elif isinstance(action, ApplyService):
                observation, changed = self.apply_service(md, spec, action.served)
                if changed:
                    wrote.append("inferenceservice")
                inputs = replace(inputs, service=observation)
        if (stepped is None and not done and spec.rollout.strategy == "canary" and inputs.error is None
                and status.get("stable") and p.status.get("phase") not in ("Converting", "Failed")):
            # A pass without news (a timer tick, KServe reporting): the rollout still steps with what
            # it has, and the InferenceService still converges (e.g. the second write of a rollback).
            p, changed, stepped = self._rollout(md, spec, registry, inputs, None)
            if changed:
                wrote.append("inferenceservice")
        stalled = None
        if p.status.get("phase") == "Failed":
            stalled = next((Failure(c["reason"], c.get("message", ""), False)
                            for c in p.status["conditions"] if c["type"] == "Stalled"), None)
        result = self._finish(md, p, tuple(wrote), stalled=stalled)
        return replace(result, rollout=stepped) if stepped is not None else result

    def _rollout(self, md: dict, spec: DeploymentSpec, registry, inputs: Inputs,
                 target: Served | None) -> tuple[Plan, bool, rollout.StepResult]:
        """`strategy: canary`: one pass of the rollout driver on the InferenceService, and the
        status saying so. Every piece of rollout state is in `status.canary`."""
        status = inputs.status
        ns = md["metadata"]["namespace"]
        platform, store, history = self.rollout_parts(md, spec, registry, inputs, target)
        step = rollout.step_deployment(md, spec, status, target, self.config, now=inputs.now, platform=platform,
                                       store=store, history=history,
                                       secret_reader=rollout.secret_reader(self.kube, ns))
        p = self._status_plan(inputs, step.observation, step.stable, step.canary, step.state, step.notifications,
                              promoted=step.promoted)
        events = () if store.emitted else p.events  # emitted with the status that recorded them
        if inputs.error is not None:  # keep saying what went wrong with the newest version
            events += plan(replace(inputs, service=step.observation)).events
        p = replace(p, events=events)
        if store.wrote:  # the final status write starts from what the store persisted
            md["status"] = store.saved
            # A transition tags versions in MLflow, a promotion may move an alias: ask again.
            self.resolves.forget(registry.tracking_uri, spec.model.name)
        return p, step.changed, step

    def _convert(self, md, spec, registry, resolved, inputs: Inputs) -> Inputs:
        try:
            outcome = self.converter.convert(md, spec, registry, resolved)
        except errors.ModelOpsError as exc:
            self.resolves.forget(registry.tracking_uri, spec.model.name)  # it may have written tags
            log.warning("conversion of %s failed: %s", resolved.label, exc)
            return replace(inputs, error=Failure.from_error(exc))
        if outcome.served is not None:
            if not outcome.served.cached:  # converted here: the version's tags are new
                self.resolves.forget(registry.tracking_uri, spec.model.name)
            return replace(inputs, conversion=outcome.served)
        return replace(inputs, converting=outcome.running)

    def _finish(self, md: dict, p: Plan, wrote: tuple[str, ...], stalled: Failure | None) -> Result:
        old = md.get("status") or {}
        patch = diffing.status_patch(old, p.status)
        meta = md["metadata"]
        if patch:
            self.kube.merge_patch(MODELDEPLOYMENTS.path(meta["namespace"], meta["name"], "status"),
                                  {"status": patch})
            wrote = wrote + ("status",)
        owed = None
        try:
            spec = parse_spec(md.get("spec"))
            owed = rollout.deliveries(md, spec, p.status.get("canary"), rollout.secret_reader(self.kube, meta["namespace"]))
        except Exception as exc:  # an invalid spec, or a signing Secret we cannot read: say so, go on
            log.warning("%s/%s: webhooks not delivered: %s", meta["namespace"], meta["name"], exc)
        return Result(body=md, events=p.events, retry=p.retry, stalled=stalled, wrote=wrote, deliveries=owed,
                      phase=p.status.get("phase"))

    def acknowledge(self, namespace: str, name: str, webhook: str, seq: int) -> bool:
        """Record a webhook delivery in status.canary (so a restart resumes after it)."""
        md = self.kube.get(MODELDEPLOYMENTS.path(namespace, name))
        if md is None:
            return False
        status = md.get("status") or {}
        new = rollout.acknowledged(parse_spec(md.get("spec")), status.get("canary"), webhook, seq)
        if new is None:
            return False
        patch = diffing.status_patch(status.get("canary") or {}, new)
        self.kube.merge_patch(MODELDEPLOYMENTS.path(namespace, name, "status"), {"status": {"canary": patch}})
        return True

