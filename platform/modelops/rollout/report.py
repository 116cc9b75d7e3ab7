"""The rollout report: why a candidate was promoted or rolled back, as a JSON document and a picture.

When a rollout ends (a `Promote` by analysis or by hand, a `RollBack` of any reason), the
history (`modelops.rollout.history.RegistryHistory`) logs `report.json` and `report.png` into the
candidate version's MLflow run; this module only builds them (pure, no I/O):

- `build_report(state, ending, ...)`: the candidate and stable versions, the ending (outcome,
  reason, deciding check, message), when the canary started and ended, the performance gate's and
  the shadow phase's records, and the journal (`modelops.rollout.journal`: one record per counted
  analysis and gate verdict, candidate and stable values side by side where both were measured),
  plus `notMeasured`: what the picture lacks and which setting would measure it;
- `render_png(report)`: three panels against the journal's records (gate, shadow, each step):
  success rate, p99 latency (ms) and agreement with the stable version, candidate and stable.
  Any subset of data draws: a panel without a number says so.
"""

from __future__ import annotations

import io
import textwrap
from datetime import datetime

from .actions import Promote, RollBack
from .journal import gate_entry
from .state import PerformanceGateRecord, RolloutState, format_time

SCHEMA_VERSION = 1
ENDING_PROMOTIONS = ("Analysis", "Manual")  # Promote reasons that end a canary (not FirstDeployment, Replace)

# (panel title, candidate key, stable key)
PANELS = (("success rate", "successRate", "stableSuccessRate"), ("p99 latency (ms)", "p99Ms", "stableP99Ms"),
          ("agreement with the stable", "agreement", None))
# What measures each number the picture draws (said in `notMeasured` when none was).
HINTS = {
    "successRate": "the candidate's success rate is measured by the traffic steps' analyses and the performance gate",
    "stableSuccessRate": "the stable's success rate is measured by analysis.successRate.maxDrop and the "
                         "performance gate",
    "p99Ms": "the candidate's p99 is measured by analysis.p99LatencyMs and the performance gate",
    "stableP99Ms": "the stable's p99 is measured by analysis.p99LatencyMs.maxRatio and the performance gate",
    "agreement": "agreement is measured by rollout.shadow",
}


def is_ending(move) -> bool:
    """Whether a transition ends a canary (and so gets a report)."""
    return (isinstance(move, Promote) and move.reason in ENDING_PROMOTIONS) or \
        (isinstance(move, RollBack) and bool(move.version))


def _owns(state: RolloutState, ending) -> bool:
    """Whether `state`'s canary records (journal, start) are the ending candidate's: a pass that
    rolls a canary back and starts another leaves the newer one's in the state."""
    if isinstance(ending, Promote):
        return state.stable_version == ending.version
    return state.rolled_back is not None and state.rolled_back.version == ending.version


def build_report(state: RolloutState, ending, *, deployment: str, model: str,
                 now: datetime | None = None) -> dict:
    """The report of the canary that `ending` (a Promote or RollBack action) ended, from the
    state persisted with it (pure)."""
    version = ending.version
    mine = _owns(state, ending)
    if isinstance(ending, Promote):
        stable = ending.previous
        end = {"outcome": "Promoted", "reason": ending.reason,
               "message": state.message if mine else f"v{version} promoted ({ending.reason})"}
    else:
        stable = ending.stable_version
        end = {"outcome": "RolledBack", "reason": ending.reason, **({"check": ending.check} if ending.check else {}),
               "message": ending.message}
    ended = now or (state.rolled_back.at if mine and state.rolled_back and isinstance(ending, RollBack) else None)
    pg = state.performance_gate if state.performance_gate and state.performance_gate.version == version else None
    sh = state.shadow if state.shadow and state.shadow.version == version else None
    last = state.analysis if mine and state.analysis and str(state.analysis.get("version")) == version else None
    steps = [dict(e) for e in state.journal] if mine else []
    report = {
        "kind": "ModelOpsRolloutReport", "schemaVersion": SCHEMA_VERSION,
        "deployment": deployment, "model": model, "version": version, "stableVersion": stable,
        "ending": end,
        "startedAt": format_time(state.started_at) if mine else None,
        "endedAt": format_time(ended),
        "performanceGate": pg.to_status() if pg else None,
        "shadow": sh.to_status() if sh else None,
        "lastAnalysis": last,
        "steps": steps,
    }
    report["notMeasured"] = not_measured(report)
    return report


def points(report: dict) -> list[dict]:
    """The records the picture draws: the journal, or, for a report without one (an old status),
    what the gate and shadow records hold."""
    steps = list(report.get("steps") or ())
    phases = {e.get("phase") for e in steps}
    extra = []
    pg = report.get("performanceGate") or {}
    if "performanceGate" not in phases and (pg.get("candidate") or pg.get("stable")):
        rec = PerformanceGateRecord.from_status(pg)
        extra.append(gate_entry(rec, rec.outcome, rec.check, rec.decided_at or rec.requested_at) if rec else {})
    sh = report.get("shadow") or {}
    if "shadow" not in phases and sh.get("values"):
        extra.append({"phase": "shadow", "weight": 0, "outcome": sh.get("outcome", ""), "values": dict(sh["values"])})
    return [e for e in extra if e] + steps


def not_measured(report: dict) -> list[str]:
    """What the report's picture lacks, each with the setting that would measure it."""
    pts = points(report)
    have = {k for e in pts for k in (e.get("values") or {})}
    out = []
    if not pts:
        out.append("no analysis was counted and no performance gate decided: nothing was measured")
        return out
    for _title, cand, stab in PANELS:
        for key in (cand, stab):
            if key and key not in have:
                out.append(f"{key}: {HINTS[key]}")
    return out


def _label(e: dict) -> str:
    phase = e.get("phase")
    if phase == "performanceGate":
        return f"gate #{e.get('attempt', 1)}"
    if phase == "shadow":
        return "shadow"
    step = e.get("step")
    return f"{e.get('weight', '?')}%" + (f" (step {step + 1})" if isinstance(step, int) else "")


_COLOURS = {"Passed": "#2e7d32", "Failed": "#c62828", "Inconclusive": "#ef6c00"}


def render_png(report: dict, *, dpi: int = 100) -> bytes:
    """The report's picture (PNG bytes): success rate, p99 ms and agreement per record, candidate
    and stable. Drawn with matplotlib's Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = points(report)
    fig = Figure(figsize=(10, 9), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    end = report.get("ending") or {}
    cand, stable = f"v{report.get('version')}", f"v{report.get('stableVersion')}"
    title = (f"{report.get('model', '')} {cand} vs stable {stable}: {end.get('outcome', '?')}"
             f" ({end.get('reason', '')}{', ' + end['check'] if end.get('check') else ''})")
    message = textwrap.shorten(str(end.get("message") or ""), 220, placeholder=" ...")
    fig.suptitle(title + ("\n" + "\n".join(textwrap.wrap(message, 110)) if message else ""), fontsize=10)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    xs = list(range(len(pts)))
    for ax, (name, ckey, skey) in zip(axes, PANELS):
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
        for x, e in zip(xs, pts):  # a failed or inconclusive record's column is shaded
            if e.get("outcome") in ("Failed", "Inconclusive"):
                ax.axvspan(x - 0.5, x + 0.5, color=_COLOURS[e["outcome"]], alpha=0.07, linewidth=0)
        series = [(ckey, f"candidate {cand}", dict(fmt="o-", color="#1565c0"), -0.06, 4)]
        if skey:
            series.append((skey, f"stable {stable}", dict(fmt="s--", color="#ef6c00", mfc="none"), 0.06, -11))
        if ckey == "agreement":
            series.append(("cosine", "cosine (low quantile)", dict(fmt="^:", color="#6a1b9a"), 0.06, -11))
        found: list[float] = []
        for key, who, style, dodge, up in series:
            ys = [(e.get("values") or {}).get(key) for e in pts]
            have = [(x + dodge, float(y)) for x, y in zip(xs, ys) if isinstance(y, (int, float))]
            if not have:
                continue
            style = dict(style)
            ax.plot([x + dodge for x in xs], [float(y) if isinstance(y, (int, float)) else float("nan") for y in ys],
                    style.pop("fmt"), label=who, **style)
            if len(have) <= 10:
                for x, y in have:
                    ax.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(5, up), fontsize=7)
            found += [y for _, y in have]
        if found:
            ax.legend(fontsize=7, loc="best")
            if ckey in ("successRate", "agreement"):  # shares: up to 1, the differences visible
                span = max(1.0 - min(found), 0.01)
                ax.set_ylim(min(found) - 0.2 * span, 1.0 + 0.2 * span)
        else:
            hint = HINTS[ckey] + (f"; {HINTS[skey]}" if skey else "")
            ax.text(0.5, 0.5, "not measured\n" + textwrap.fill(hint, 90), ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="#555555")
    last = axes[-1]
    if pts:
        last.set_xticks(xs)
        last.set_xticklabels([_label(e) for e in pts], rotation=45 if len(pts) > 8 else 0, ha="right"
                             if len(pts) > 8 else "center", fontsize=7)
        for tick, e in zip(last.get_xticklabels(), pts):
            tick.set_color(_COLOURS.get(e.get("outcome"), "#000000"))
        last.set_xlim(-0.5, len(pts) - 0.5)
    else:
        last.set_xticks([])
    last.set_xlabel("performance gate, shadow analyses, traffic steps (label colour: the record's outcome)",
                    fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def artifact_dir(namespace: str, name: str, started_at: datetime | None) -> str:
    """Where a report lives in the candidate's run: `modelops-rollout/<ns>.<name>/<start>`."""
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ") if started_at else "unknown-start"
    return f"modelops-rollout/{namespace}.{name}/{stamp}"


__all__ = ["ENDING_PROMOTIONS", "HINTS", "PANELS", "SCHEMA_VERSION", "artifact_dir", "build_report", "is_ending",
           "not_measured", "points", "render_png"]
