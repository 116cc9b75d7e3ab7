"""Decide what a ModelDeployment needs next, and what its status says: pure functions.

The operator gathers facts (the resolved MLflow version, a conversion outcome, the observed
InferenceService), calls `plan()`, executes the returned actions, adds what it learned to the
inputs and calls `plan()` again until no action is left; then it writes the status if it differs.
Each call is a pure function of its inputs, so every transition is unit-testable without
Kubernetes, and reconciling unchanged facts yields an identical status (no writes).

Phases: Pending -> Converting -> Deploying -> Ready; Failed on a permanent error (the previously
serving version stays deployed). Conditions follow kstatus: Ready, Reconciling, Stalled, plus
Converted. `Progressing` and `RolledBack` belong to the canary rollout and are not produced here.
"""

from __future__ import annotations

import datetime
from dataclasses import replace

from . import schema
from .facts import ApplyService, Convert, Event, Failure, Inputs, Plan, Served
from .spec import DeploymentSpec


# --- conditions ------------------------------------------------------------------------------
def now_rfc3339() -> str:
    """Now, as Kubernetes writes times (the operator's and local mode's status documents)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(previous: list[dict], type_: str, status: str, reason: str, message: str,
              generation: int, now: str) -> dict:
    """A kstatus condition; the transition time moves only when `status` flips."""
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old.get("lastTransitionTime", now) if old and old.get("status") == status else now
    return {"type": type_, "status": status, "reason": reason, "message": message[:4096],
            "lastTransitionTime": since, "observedGeneration": generation}


_condition = condition


def _conditions(inp: Inputs, *, ready: tuple, reconciling: tuple, stalled: tuple,
                converted: tuple) -> list[dict]:
    prev = inp.status.get("conditions") or []
    return [
        _condition(prev, "Ready", *ready, inp.generation, inp.now),
        _condition(prev, "Reconciling", *reconciling, inp.generation, inp.now),
        _condition(prev, "Stalled", *stalled, inp.generation, inp.now),
        _condition(prev, "Converted", *converted, inp.generation, inp.now),
    ]


def _label(spec: DeploymentSpec, version: str | None) -> str:
    return f"{spec.model.name} v{version}" if version else spec.model.uri


def _describe(spec: DeploymentSpec) -> str:
    c = spec.conversion
    tol = "" if c.rtol is None and c.atol is None else f", rtol {c.rtol}, atol {c.atol}"
    return f"{c.precision}, opset {c.opset}{tol}"


# --- the planner -----------------------------------------------------------------------------
def plan(inp: Inputs) -> Plan:
    """The next actions and the status they lead to, from the facts gathered so far."""
    status = inp.status or {}
    spec = inp.spec
    options = spec.conversion.fingerprint
    stable = Served.from_status(status.get("stable"))
    failed = status.get("failed") or {}
    target_version = inp.resolved_version or status.get("resolvedVersion") or (stable and stable.version)
    stable_fits = stable is not None and stable.version == target_version and stable.options == options

    # A registry/conversion error from this pass decides the outcome, unless it is about a target
    # the current stable already covers (then it's a transient hiccup of a no-op pass).
    if inp.error is not None:
        return _plan_error(inp, stable, target_version, options)

    if target_version is None:
        return Plan(status=dict(status))  # nothing resolved yet: nothing to say

    if stable_fits:
        target = stable
    elif inp.conversion is not None and inp.conversion.version == target_version \
            and inp.conversion.options == options:
        target = inp.conversion
    elif (failed.get("version") == target_version and failed.get("options") == options
          and status.get("observedGeneration") == inp.generation):
        # Already failed permanently for this generation: don't retry until the spec or the
        # alias changes (no retry storm); keep serving the previous version.
        failure = Failure(failed.get("reason", "Failed"), failed.get("message", ""), False)
        return _plan_error(replace(inp, error=failure), stable, target_version, options)
    elif inp.resolved_version is None:
        return Plan(status=dict(status))  # status refresh only; conversion waits for a resolve
    elif inp.converting:
        return _plan_converting(inp, stable, target_version, actions=())
    else:
        return _plan_converting(inp, stable, target_version,
                                actions=(Convert(version=target_version, options=options),))

    if inp.service is None:
        return Plan(actions=(ApplyService(target),), status=dict(status))
    return _plan_deployed(inp, stable, target)


def _base(inp: Inputs, stable: Served | None, target_version: str | None) -> dict:
    out = {"observedGeneration": inp.generation}
    if target_version:
        out["resolvedVersion"] = target_version
    if stable is not None:
        out["stable"] = stable.to_status()
    if inp.status.get("url"):
        out["url"] = inp.status["url"]
    if inp.status.get("failed"):
        out["failed"] = dict(inp.status["failed"])
    # The canary rollout's state survives every other path (conversion, errors): only
    # `plan_rollout` changes it.
    for key in ("canary", "canaryModel"):
        if inp.status.get(key):
            out[key] = inp.status[key]
    return out


def _events(inp: Inputs, new: dict, extra: tuple[Event, ...] = ()) -> tuple[Event, ...]:
    """One Event per transition: a new phase, a new stable version, a new stall reason."""
    old = inp.status or {}
    events = list(extra)
    old_stalled = next((c for c in old.get("conditions") or [] if c.get("type") == "Stalled"), {})
    new_stalled = next((c for c in new.get("conditions") or [] if c.get("type") == "Stalled"), {})
    old_rec = next((c for c in old.get("conditions") or [] if c.get("type") == "Reconciling"), {})
    new_rec = next((c for c in new.get("conditions") or [] if c.get("type") == "Reconciling"), {})
    if new_stalled.get("status") == "True" and (
            old_stalled.get("status") != "True" or old_stalled.get("reason") != new_stalled.get("reason")):
        events.append(Event("Warning", new_stalled["reason"], new_stalled["message"]))
    elif new_rec.get("reason") != old_rec.get("reason") and new_rec.get("status") == "True" \
            and new_rec.get("reason") not in ("Converting", "Deploying"):
        events.append(Event("Warning", new_rec["reason"], new_rec["message"]))
    if new.get("phase") != old.get("phase") and new.get("phase") not in (None, "Failed"):
        ready = next(c for c in new["conditions"] if c["type"] == "Ready")
        rec = new_rec if new_rec.get("status") == "True" else ready
        events.append(Event("Normal", new["phase"], rec["message"]))
    return tuple(events)


def _plan_error(inp: Inputs, stable: Served | None, target_version: str | None, options: str) -> Plan:
    err = inp.error
    assert err is not None
    status = _base(inp, stable, target_version)
    keep = f"; still serving {_label(inp.spec, stable.version)}" if stable else ""
    was_ready = (inp.status or {}).get("phase") == "Ready"
    if err.retryable:
        # A passing condition: keep what serves, say we are retrying.
        status["phase"] = inp.status.get("phase") or "Pending"
        if status["phase"] == "Failed":
            status["phase"] = "Pending"
        old_ready = next((c for c in inp.status.get("conditions") or [] if c.get("type") == "Ready"), None)
        resync = was_ready and inp.status.get("observedGeneration") == inp.generation and old_ready
        ready = ((old_ready["status"], old_ready["reason"], old_ready.get("message", ""))
                 if resync else ("False", err.reason, err.message + keep))
        status["conditions"] = _conditions(
            inp, ready=ready,
            reconciling=("True", err.reason, f"{err.message}; retrying with backoff"),
            stalled=("False", "NoError", ""),
            converted=_converted_keep(inp, stable))
        if resync:
            status["phase"] = "Ready"
        plan_ = Plan(status=status, retry=err)
    else:
        status["phase"] = "Failed"
        if target_version:
            status["failed"] = {"version": target_version, "options": options, "reason": err.reason,
                                "message": err.message[:2048]}
        conversion_failed = err.reason in ("ConversionFailed", "UnsupportedFlavor", "ParityFailed",
                                           "InvalidOnnxModel")
        status["conditions"] = _conditions(
            inp, ready=("False", err.reason, err.message + keep),
            reconciling=("False", "Stalled", ""),
            stalled=("True", err.reason, err.message + keep),
            converted=(("False", err.reason, err.message) if conversion_failed
                       else _converted_keep(inp, stable)))
        plan_ = Plan(status=status)
    # Keep observing (never changing) what already serves, so the URL stays current.
    if stable is not None and inp.service is None:
        return Plan(actions=(ApplyService(stable),), status=status, retry=plan_.retry)
    if stable is not None and inp.service is not None and inp.service.url and inp.service.ready:
        status["url"] = inp.service.url
    return replace(plan_, events=_events(inp, status))


def _converted_keep(inp: Inputs, stable: Served | None) -> tuple:
    old = next((c for c in inp.status.get("conditions") or [] if c.get("type") == "Converted"), None)
    if old:
        return old["status"], old.get("reason", ""), old.get("message", "")
    if stable:
        return "True", "Converted", f"{_label(inp.spec, stable.version)} converted to ONNX"
    return "Unknown", "Pending", "not converted yet"


def _plan_converting(inp: Inputs, stable: Served | None, target_version: str, actions: tuple) -> Plan:
    status = _base(inp, stable, target_version)
    status.pop("failed", None)
    status["phase"] = "Converting"
    what = f"converting {_label(inp.spec, target_version)} to ONNX ({_describe(inp.spec)})"
    keep = f"; serving {_label(inp.spec, stable.version)} meanwhile" if stable else ""
    status["conditions"] = _conditions(
        inp, ready=("False", "Converting", what + keep),
        reconciling=("True", "Converting", what),
        stalled=("False", "NoError", ""),
        converted=("Unknown", "Converting", what))
    return Plan(actions=actions, status=status, events=_events(inp, status))


def _plan_deployed(inp: Inputs, old_stable: Served | None, target: Served) -> Plan:
    svc = inp.service
    assert svc is not None
    # With `strategy: replace` the InferenceService now points at the target: it is the stable.
    status = _base(inp, target, target.version)
    status.pop("failed", None)
    label = _label(inp.spec, target.version)
    # The condition says what is true of the version (a later pass, which does not look the
    # conversion up, writes the same words: no status write); the Event says how it came.
    converted = ("True", "Converted", f"{label} converted to ONNX sha256 {target.sha256[:12]}")
    extra: tuple[Event, ...] = ()
    if inp.conversion is not None and inp.conversion == target:
        extra += (Event("Normal", "Converted", converted[2] + (" (cached)" if target.cached else "")),)
    if old_stable is None or old_stable.version != target.version or old_stable.options != target.options:
        extra += (Event("Normal", "Deployed", f"InferenceService now serves {label} from {target.storage_uri}"),)
        if target.storage_note:
            extra += (Event("Normal", "ArtifactProxy", target.storage_note),)
    if svc.ready and svc.storage_uri == target.storage_uri:
        status["phase"] = "Ready"
        if svc.url:
            status["url"] = svc.url
        at = f" at {svc.url}" if svc.url else ""
        status["conditions"] = _conditions(
            inp, ready=("True", "Serving", f"serving {label}{at}"),
            reconciling=("False", "Reconciled", ""),
            stalled=("False", "NoError", ""), converted=converted)
    else:
        status["phase"] = "Deploying"
        why = svc.message or "waiting for the InferenceService to become ready"
        status["conditions"] = _conditions(
            inp, ready=("False", "Deploying", f"deploying {label}: {why}"),
            reconciling=("True", "Deploying", f"deploying {label}: {why}"),
            stalled=("False", "NoError", ""), converted=converted)
    return Plan(status=status, events=_events(inp, status, extra))


# --- canary rollouts (the engine decided; this says it in the status) -----------------------------
ACTIVE_ROLLOUT_PHASES = tuple(schema.ACTIVE_ROLLOUT_PHASES)  # defined once, in the schema
NOTIFY_EVENTS = {  # engine notification -> (Event type, Event reason)
    "Started": ("Normal", "CanaryStarted"),
    "StepAdvanced": ("Normal", "CanaryStepAdvanced"),
    "Promoted": ("Normal", "Promoted"),
    "RolledBack": ("Warning", "RolledBack"),
    "Failed": ("Warning", "CanaryFailed"),
    "ShadowStarted": ("Normal", "ShadowStarted"),
    "ShadowPassed": ("Normal", "ShadowPassed"),
    "ShadowFailed": ("Warning", "ShadowFailed"),
    "PerformanceGatePassed": ("Normal", "PerformanceGatePassed"),
    "PerformanceGateFailed": ("Warning", "PerformanceGateFailed"),
}


def plan_rollout(inp: Inputs, stable: Served, canary: Served | None, rollout: dict,
                 notifications: tuple = (), promoted: bool = False) -> Plan:
    """Status and Events of a `strategy: canary` deployment after the rollout engine's step.

    `rollout` is the engine's state (`RolloutState.to_status()`, kept in `status.canary`);
    `stable` and `canary` are what the InferenceService now serves; `notifications` the engine's
    new transitions (one Event each); `promoted`: the stable version changed in this pass.
    """
    svc = inp.service
    assert svc is not None
    status = _base(inp, stable, inp.resolved_version or inp.status.get("resolvedVersion") or stable.version)
    status.pop("failed", None)
    status["canary"] = rollout
    if canary is not None:
        status["canaryModel"] = canary.to_status()
    else:
        status.pop("canaryModel", None)
    label = _label(inp.spec, stable.version)
    converted = ("True", "Converted", f"{_label(inp.spec, (canary or stable).version)} converted to ONNX "
                 f"sha256 {(canary or stable).sha256[:12]}")
    phase = rollout.get("phase")
    message = rollout.get("message") or ""
    # KServe reports the InferenceService ready for the spec we last wrote (stable, or in
    # Knative mode the canary's spec in front of the previous revision).
    ready_now = svc.ready and svc.storage_uri in {stable.storage_uri, canary and canary.storage_uri}
    at = f" at {svc.url}" if svc.url else ""
    if ready_now and svc.url:
        status["url"] = svc.url
    serving = f"serving {label}" + (f", canary v{canary.version} at {rollout.get('weight', 0)}%" if canary else "")
    if phase in ACTIVE_ROLLOUT_PHASES:
        status["phase"] = "Progressing"
        progressing = ("True", rollout.get("reason") or "Progressing", message)
        rolled_back = ("False", "Progressing", "")
        reconciling = ("True", "Progressing", message)
    elif phase == "RolledBack" and (rollout.get("rolledBack") or {}).get("version") == status.get("resolvedVersion"):
        status["phase"] = "RolledBack"
        rb = rollout.get("rolledBack") or {}
        progressing = ("False", "RolledBack", message)
        rolled_back = ("True", rb.get("reason") or "RolledBack", message)
        reconciling = ("False", "RolledBack", "")
    else:
        status["phase"] = "Ready" if ready_now else "Deploying"
        progressing = ("False", rollout.get("reason") or "Stable", message)
        rolled_back = ("False", "NoRollback", "")
        reconciling = ("False", "Reconciled", "") if ready_now else \
            ("True", "Deploying", f"deploying {label}: {svc.message or 'waiting for the InferenceService'}")
    ready = ("True", "Serving", serving + at) if ready_now else \
        ("False", "Deploying", f"deploying {label}: {svc.message or 'waiting for the InferenceService'}")
    status["conditions"] = _conditions(inp, ready=ready, reconciling=reconciling,
                                       stalled=("False", "NoError", ""), converted=converted)
    prev = inp.status.get("conditions") or []
    status["conditions"] += [
        _condition(prev, "Progressing", *progressing, inp.generation, inp.now),
        _condition(prev, "RolledBack", *rolled_back, inp.generation, inp.now),
    ]
    extra: list[Event] = []
    if promoted:
        extra.append(Event("Normal", "Deployed", f"InferenceService now serves {label} from {stable.storage_uri}"))
        if stable.storage_note:
            extra.append(Event("Normal", "ArtifactProxy", stable.storage_note))
    for n in notifications:
        type_, reason = NOTIFY_EVENTS.get(n.event, ("Normal", n.event))
        text = n.message + (f" (check {n.check})" if n.check and n.check not in n.message else "")
        extra.append(Event(type_, reason, text))
    # Phase Events only outside a rollout's own transitions (those have theirs).
    events = _events(inp, status, tuple(extra)) if not notifications else tuple(extra)
    return Plan(status=status, events=events)


def plan_invalid(status: dict, generation: int, failure: Failure, now: str) -> Plan:
    """Status for a spec that does not parse (only reachable where no API server validated it)."""
    status = status or {}
    prev = status.get("conditions") or []
    new = {k: v for k, v in status.items() if k in ("stable", "url", "resolvedVersion")}
    new.update(phase="Failed", observedGeneration=generation, conditions=[
        _condition(prev, "Ready", "False", failure.reason, failure.message, generation, now),
        _condition(prev, "Reconciling", "False", "Stalled", "", generation, now),
        _condition(prev, "Stalled", "True", failure.reason, failure.message, generation, now),
        next((c for c in prev if c.get("type") == "Converted"),
             _condition(prev, "Converted", "Unknown", "InvalidSpec", "", generation, now)),
    ])
    old_stalled = next((c for c in prev if c.get("type") == "Stalled"), {})
    events = () if old_stalled.get("message") == failure.message and old_stalled.get("status") == "True" \
        else (Event("Warning", failure.reason, failure.message),)
    return Plan(status=new, events=events)
