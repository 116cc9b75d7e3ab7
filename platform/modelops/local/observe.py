"""What local mode observes for the rollout driver and the status document, from the predictors'
slots: pure functions of the slots, the rollout state and what MLflow resolved (no I/O, no
decision the engine makes).

- `needed`: the versions that must have a running predictor now;
- `observe`: the driver's `target` and `preparing`, as the operator defines them;
- `status_facts`: the `Facts` the status document is composed from;
- `traffic_stats`: req/s and p99 of each serving version, for the live table.
"""

from __future__ import annotations

from .. import errors
from ..rollout import RolloutState
from ..rollout.analysis import LatencyQuantile, RequestCount, Target
from .predictors import Predictors
from .status import Facts


def refused(state: RolloutState, version: str, generation: int) -> bool:
    """The engine will not canary this version again (rolled back in this generation, and not
    the stable version: that one serves)."""
    return version != state.stable_version and state.refuses(version, generation)


def needed(state: RolloutState, resolved: str | None, generation: int) -> set[str]:
    """Versions that must have a running predictor now."""
    traffic = state.traffic
    need = {v for v in (traffic.stable, traffic.canary) if v}
    if resolved and not refused(state, resolved, generation):
        need.add(resolved)
    return need


def observe(predictors: Predictors, state: RolloutState, resolved: str | None, generation: int,
            target: str | None) -> tuple[str | None, str | None, str | None]:
    """(target, preparing, the last ready target) as the operator defines them, from the slots;
    `target`: the last ready target (the resolved version until a newer one is ready)."""
    v = resolved
    if v is None:
        return target, None, target
    if refused(state, v, generation):
        return v, None, target  # the engine knows it was rolled back: it will not canary it again
    slot = predictors.get(v)
    if slot is not None and slot.ready:
        return v, None, v
    if slot is not None and slot.state in ("converting", "starting", "pending"):
        return target, v, target
    return target, None, target


def status_facts(predictors: Predictors, state: RolloutState, *, generation: int, resolved: str | None,
                 resolve_error: errors.ModelOpsError | None, status: dict | None, url: str | None,
                 fingerprint: str) -> Facts:
    """The facts of the status document: what serves, what is being prepared, the last error."""
    stable_slot = predictors.get(state.stable_version)
    stable = stable_slot.served if stable_slot is not None else None
    if stable is None and status and (status.get("stable") or {}).get("version") == state.stable_version:
        stable = status.get("stable")
    facts = Facts(generation=generation, resolved_version=resolved, stable=stable, url=url, canary=state)
    slot = predictors.get(resolved)
    if resolve_error is not None:
        e = resolve_error
        facts.error = (e.reason, str(e), e.retryable)
    elif slot is not None and slot.state == "pending" and slot.error is not None:
        e = slot.error
        facts.error = (e.reason, str(e), True)
    elif slot is not None and slot.state == "failed" and slot.error is not None:
        e = slot.error
        facts.error = (e.reason, str(e), False)
        facts.failed = {"version": slot.version, "options": fingerprint,
                        "reason": e.reason, "message": str(e)[:2048]}
    elif slot is not None and slot.state == "converting":
        facts.converting = slot.version
    elif slot is not None and slot.state == "starting":
        facts.starting = slot.version
    return facts


def traffic_stats(provider, name: str, versions: list[str],
                  interval_seconds: float) -> dict[str, tuple[float | None, float | None]]:
    """{version: (req/s, p99 ms)} over the last few seconds of `provider`'s scrapes."""
    window = max(2.0, min(5.0, interval_seconds))
    out = {}
    for v in versions:
        selector = Target(name, v, None, window, 0).selector(v)
        n = provider.query(RequestCount(selector, window))
        p99 = provider.query(LatencyQuantile(selector, window, 0.99))
        out[v] = (n / window if isinstance(n, float) else None,
                  p99 * 1000 if isinstance(p99, float) else None)
    return out
