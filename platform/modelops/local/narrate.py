"""What `modelops local up` tells its user: an event line per analysis and transition (also kept
in the events log), and the rows of the live table. Pure formatting of the engine's state and
actions; nothing here decides."""

from __future__ import annotations

from typing import Callable

from ..rollout import Notify, Outcome, Promote, RollBack, RolloutPolicy, RolloutState
from .display import Row


def report(say: Callable[[str], None], log: Callable[..., None], actions, analysis: dict | None,
           weight: int) -> None:
    """`analysis`: the analysis counted in this pass (None: none); `weight`: the canary's weight
    before this pass. The analysis first, then what it decided."""
    if analysis:
        a = analysis
        checks = ", ".join(c.get("message", "") if c["name"] in c.get("message", "")
                           else f"{c['name']} {c.get('message', '')}" for c in a.get("checks", [])
                           if c.get("outcome") != Outcome.SKIPPED.value)
        say(f"analysis of v{a['version']} at {weight}%: {a['outcome']} ({checks})")
        log("Analysis", version=a["version"], outcome=a["outcome"], check=a.get("check"),
            message=a.get("message"), weight=weight)
    for a in actions:
        if isinstance(a, Notify):
            n = a.notification
            check = f" [deciding check: {n.check}]" if n.check else ""
            say(f"{n.event}: {n.message}{check}")
            log(n.event, version=n.version, weight=n.weight, stableVersion=n.stable_version,
                reason=n.reason, message=n.message, check=n.check)
        elif isinstance(a, Promote) and a.reason not in ("Analysis", "Manual"):
            what = "first deployment" if a.reason == "FirstDeployment" else f"strategy replace, was v{a.previous}"
            say(f"v{a.version} serves 100% ({what})")
            log("Serving", version=a.version, reason=a.reason, previous=a.previous)
        elif isinstance(a, RollBack) and a.reason in ("TargetIsStable", "Superseded", "Replace"):
            say(f"canary v{a.version} removed: {a.message}")
            log("Removed", version=a.version, reason=a.reason, message=a.message)


def table(s: RolloutState, policy: RolloutPolicy, stats: dict, phase: str) -> tuple[list[Row], str]:
    """The live table's rows (stable, canary) and its title."""
    t = s.traffic
    rows = []
    if t.stable:
        rps, p99 = stats.get(t.stable, (None, None))
        rows.append(Row(t.stable, "stable", 100 - t.weight if t.canary else 100, rps=rps, p99_ms=p99))
    if t.canary:
        rps, p99 = stats.get(t.canary, (None, None))
        a = s.analysis if s.analysis and s.analysis.get("version") == t.canary else None
        checks = ""
        if a:
            outcomes = [c.get("outcome") for c in a.get("checks", [])]
            checks = f"{outcomes.count('Passed')} passed, {outcomes.count('Failed')} failed"
        rows.append(Row(t.canary, "canary", t.weight, step=f"{s.step + 1}/{len(policy.steps)}",
                        checks=checks or "none yet", analyses=f"failed {s.failed_checks}/{policy.failure_limit}",
                        rps=rps, p99_ms=p99))
    return rows, (f"{phase}; canary {s.phase.value}: {s.message}" if s.message else phase)
