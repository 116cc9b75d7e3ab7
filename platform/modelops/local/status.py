"""The status document of a local deployment: what the operator would write in `.status`.

Same fields as the ModelDeployment's status (README: "A ModelDeployment"): `observedGeneration`,
`phase`, `conditions` (Ready, Reconciling, Stalled, Converted), `resolvedVersion`, `stable`,
`url` (the router's address), `failed`, and `canary` = the rollout engine's `RolloutState`
exactly as `status.canary` holds it. `render()` is `modelops local status`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..deployment.plan import condition as _condition
from ..deployment.plan import now_rfc3339
from ..rollout.state import Phase, RolloutState


@dataclass
class Facts:
    """What local mode knows at one moment (the operator's equivalent comes from Kubernetes)."""

    generation: int
    resolved_version: str | None = None
    stable: dict | None = None  # {version, onnxUri, storageUri, sha256, options}
    url: str | None = None
    converting: str | None = None  # a version being converted
    starting: str | None = None  # a version whose predictor is starting
    error: tuple[str, str, bool] | None = None  # (reason, message, retryable)
    failed: dict | None = None  # {version, options, reason, message}: not retried for this generation
    stopped: bool = False  # `local down` / Ctrl-C: nothing serves until `local up` again
    canary: RolloutState = field(default_factory=RolloutState)


def compose(facts: Facts, previous: dict | None, now: str | None = None) -> dict:
    """The status document for `facts` (conditions keep their transition times from `previous`)."""
    now = now or now_rfc3339()
    prev = (previous or {}).get("conditions") or []
    stable = facts.stable
    serving = f"v{stable['version']}" if stable else None
    keep = f"; still serving {serving}" if serving else ""
    if facts.stopped:
        phase = "Pending"
        what = "local mode stopped: `modelops local up` resumes" + (f" with {serving}" if serving else "")
        ready = ("False", "Stopped", what)
        reconciling = ("False", "Stopped", what)
        stalled = ("False", "NoError", "")
    elif facts.error is not None and not facts.error[2]:
        reason, message, _ = facts.error
        phase = "Failed"
        ready = ("False", reason, message + keep)
        reconciling = ("False", "Stalled", "")
        stalled = ("True", reason, message + keep)
    elif facts.error is not None:
        reason, message, _ = facts.error
        phase = "Ready" if stable else "Pending"
        ready = ("True", "Serving", f"serving {serving}") if stable else ("False", reason, message)
        reconciling = ("True", reason, f"{message}; retrying")
        stalled = ("False", "NoError", "")
    elif facts.converting:
        phase = "Converting"
        what = f"converting v{facts.converting} to ONNX"
        ready = ("False", "Converting", what + (f"; serving {serving} meanwhile" if serving else ""))
        reconciling = ("True", "Converting", what)
        stalled = ("False", "NoError", "")
    elif facts.starting:
        phase = "Deploying"
        what = f"starting the predictor of v{facts.starting}"
        ready = ("False", "Deploying", what + (f"; serving {serving} meanwhile" if serving else ""))
        reconciling = ("True", "Deploying", what)
        stalled = ("False", "NoError", "")
    elif stable and not facts.url:  # served, but the router has no routes yet: not reachable
        phase = "Deploying"
        what = f"routing traffic to {serving}"
        ready = ("False", "Deploying", what)
        reconciling = ("True", "Deploying", what)
        stalled = ("False", "NoError", "")
    elif stable:
        phase = "Ready"
        at = f" at {facts.url}" if facts.url else ""
        ready = ("True", "Serving", f"serving {serving}{at}")
        canary = facts.canary
        rolled_back = canary.rolled_back
        if canary.phase.active:  # the operator's phases: Progressing during a canary
            phase = "Progressing"
            reconciling = ("True", "Progressing", canary.message or f"canary v{canary.version} at {canary.weight}%")
        elif canary.phase == Phase.ROLLED_BACK and rolled_back is not None \
                and rolled_back.version == facts.resolved_version:
            phase = "RolledBack"  # ... and RolledBack while the resolved version is the one rolled back
            reconciling = ("False", "RolledBack", "")
        else:
            reconciling = ("False", "Reconciled", "")
        stalled = ("False", "NoError", "")
    else:
        phase = "Pending"
        ready = ("False", "Pending", "resolving the model in MLflow")
        reconciling = ("True", "Pending", "resolving the model in MLflow")
        stalled = ("False", "NoError", "")
    if facts.failed and phase not in ("Failed",):
        failed = facts.failed
        converted = ("False", failed["reason"], failed["message"])
    elif stable:
        converted = ("True", "Converted", f"v{stable['version']} converted to ONNX sha256 {stable['sha256'][:12]}")
    elif facts.converting:
        converted = ("Unknown", "Converting", f"converting v{facts.converting}")
    else:
        converted = ("Unknown", "Pending", "not converted yet")
    doc: dict = {"observedGeneration": facts.generation, "phase": phase}
    if facts.resolved_version:
        doc["resolvedVersion"] = facts.resolved_version
    if stable:
        doc["stable"] = dict(stable)
    if facts.url and not facts.stopped:
        doc["url"] = facts.url
    if facts.failed:
        doc["failed"] = dict(facts.failed)
    doc["conditions"] = [
        _condition(prev, "Ready", *ready, facts.generation, now),
        _condition(prev, "Reconciling", *reconciling, facts.generation, now),
        _condition(prev, "Stalled", *stalled, facts.generation, now),
        _condition(prev, "Converted", *converted, facts.generation, now),
    ]
    # Progressing and RolledBack, as the operator writes them (modelops.deployment.plan.plan_rollout)
    c = facts.canary
    if c.phase.active:
        progressing, rolled = ("True", c.reason or "Progressing", c.message), ("False", "Progressing", "")
    elif phase == "RolledBack":
        rb = c.rolled_back
        progressing, rolled = ("False", "RolledBack", c.message), ("True", rb.reason or "RolledBack", c.message)
    else:
        progressing, rolled = ("False", c.reason or "Stable", c.message), ("False", "NoRollback", "")
    doc["conditions"] += [_condition(prev, "Progressing", *progressing, facts.generation, now),
                          _condition(prev, "RolledBack", *rolled, facts.generation, now)]
    doc["canary"] = facts.canary.to_status()
    return doc


# --- `modelops local status` -----------------------------------------------------------------
def _ago(stamp: str | None) -> str:
    if not stamp:
        return ""
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    s = (datetime.now(timezone.utc) - t).total_seconds()
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def render(name: str, status: dict | None, supervisor: dict | None, running: bool) -> str:
    """A human summary of the status document and the processes behind it."""
    lines = [f"ModelDeployment {name} (local mode): "
             + ("running" if running else "not running" + (" (last status below)" if status else ""))]
    if supervisor:
        lines.append(f"  manifest   {supervisor.get('manifest', '')}")
        lines.append(f"  router     {supervisor.get('router', {}).get('url', '')}"
                     f"   MLflow {supervisor.get('trackingUri', '')}")
    if not status:
        lines.append("  no status yet")
        return "\n".join(lines)
    stable = status.get("stable") or {}
    lines.append(f"  phase      {status.get('phase', '')}   resolved v{status.get('resolvedVersion', '?')}"
                 f"   stable v{stable.get('version', '-')}")
    c = status.get("canary") or {}
    phase = c.get("phase", Phase.IDLE.value)
    if c.get("version"):
        lines.append(f"  canary     v{c['version']} {phase} at {c.get('weight', 0)}% (step {c.get('step', 0) + 1})"
                     f"   failed analyses {c.get('failedChecks', 0)}, inconclusive in a row "
                     f"{c.get('inconclusiveChecks', 0)}")
    else:
        lines.append(f"  canary     {phase}" + (f": {c['message']}" if c.get("message") else ""))
    a = c.get("analysis")
    if a:
        lines.append(f"  analysis   v{a.get('version')} {a.get('outcome')} {_ago(a.get('at'))}: {a.get('message', '')}")
        for chk in a.get("checks") or []:
            value = chk.get("value")
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
            lines.append(f"               {chk.get('name', ''):<22}{chk.get('outcome', ''):<13}{shown:>10}  "
                         f"{chk.get('message', '')}")
    rb = c.get("rolledBack")
    if rb:
        check = f", deciding check {rb['check']}" if rb.get("check") else ""
        lines.append(f"  rolledBack v{rb.get('version')} {_ago(rb.get('at'))} ({rb.get('reason')}{check})")
    for cond in status.get("conditions") or []:
        if cond.get("message") or cond.get("status") == "True":
            lines.append(f"  {cond['type']:<11}{cond['status']:<6}{cond.get('reason', ''):<16}{cond.get('message', '')}")
    if supervisor and running:
        for role, child in (supervisor.get("children") or {}).items():
            where = f"  port {child['port']}" if child.get("port") else ""
            lines.append(f"  process    {role:<18} pid {child.get('pid')}{where}")
    return "\n".join(lines)
