"""The end of `modelops demo`: what happened to each version, which check decided, how many client
requests it answered, and where its rollout report is in MLflow; as a `rich` table and as JSON
(`--json PATH`). Pure: built from the events log of `modelops local up`, the versions' MLflow tags,
the client's own counts and the weights seen in the status."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# The phase a rollback reason belongs to (the rest are a canary step's analysis).
PHASES = {"PerformanceGateFailed": "performanceGate", "PerformanceGateInconclusive": "performanceGate",
          "ShadowFailed": "shadow", "ShadowInconclusive": "shadow", "InterfaceChanged": "interface"}


@dataclass
class VersionStory:
    version: str
    what: str  # what the version is, in words
    outcome: str  # promoted | rolled back | stopped by the gate | rolled back in shadow | refused | served first
    decided_by: str = ""  # the deciding check with its phase: "shadow agreement", "performanceGate maxP99Ms"
    phase: str = ""  # performanceGate | shadow | analysis | interface ("" : nothing failed)
    reason: str = ""  # the RolledBack event's reason (ShadowFailed, PerformanceGateFailed, ...)
    check: str = ""  # the deciding check's name, as the engine names it
    evidence: str = ""  # what the deciding check saw (or, promoted: what every phase measured)
    client_answers: int = 0  # client requests this version answered 200
    client_errors: int = 0  # client requests this version answered 500 (its own failure)
    max_weight: int = 0  # the highest canary weight the status showed for it
    analyses_passed: int = 0
    analyses_failed: int = 0
    gate: dict = field(default_factory=dict)  # the `<key>.performanceGate` tag
    shadow: dict = field(default_factory=dict)  # the `<key>.shadow` tag
    report: str | None = None  # the `<key>.report` tag: the artifact URI of the rollout report
    mlflow_url: str = ""  # the model version in the MLflow UI

    @property
    def where(self) -> str:
        """Where to see its rollout report: the report's artifact URI, else the version's UI page."""
        return self.report or self.mlflow_url


def _json_tag(tags: dict, key: str) -> dict:
    try:
        doc = json.loads(tags.get(key) or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _num(x, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def gate_text(gate: dict) -> str:
    if not gate:
        return ""
    return (f"gate p99 {_num(gate.get('p99Ms'))} ms (stable {_num(gate.get('stableP99Ms'))}), "
            f"{_num(gate.get('throughputRatio'), '.2f')}x the stable's throughput")


def shadow_text(shadow: dict) -> str:
    if not shadow:
        return ""
    return (f"shadow agreement {_num(shadow.get('agreement'), '.2f')} over "
            f"{_num(shadow.get('comparisons'), '.0f')} comparisons")


def stories(versions: list[tuple[str, str]], events: list[dict], tags: dict[str, dict], key: str, *,
            answered: dict[str, int], errors: dict[str, int], max_weight: dict[str, int],
            tracking: str, model: str) -> list[VersionStory]:
    """One story per (version, what it is), in that order."""
    out = []
    for v, what in versions:
        mine = [e for e in events if str(e.get("version")) == v]
        kinds = [e["kind"] for e in mine]
        analyses = [e for e in mine if e["kind"] == "Analysis" and (e.get("weight") or 0) > 0]  # canary steps
        rb = next((e for e in reversed(mine) if e["kind"] == "RolledBack"), None)
        s = VersionStory(v, what, "-", client_answers=int(answered.get(v, 0)), client_errors=int(errors.get(v, 0)),
                         max_weight=int(max_weight.get(v, 0)),
                         analyses_passed=sum(1 for a in analyses if a["outcome"] == "Passed"),
                         analyses_failed=sum(1 for a in analyses if a["outcome"] == "Failed"),
                         gate=_json_tag(tags.get(v, {}), f"{key}.performanceGate"),
                         shadow=_json_tag(tags.get(v, {}), f"{key}.shadow"),
                         report=tags.get(v, {}).get(f"{key}.report") or None,
                         mlflow_url=f"{tracking.rstrip('/')}/#/models/{model}/versions/{v}")
        if rb is not None:
            s.reason, s.check = rb.get("reason") or "", rb.get("check") or ""
            s.phase = PHASES.get(s.reason, "analysis")
            s.outcome = {"performanceGate": "stopped by the gate", "shadow": "rolled back in shadow",
                         "interface": "refused"}.get(s.phase, "rolled back")
            s.decided_by = (s.check or "analysis" if s.phase == "analysis" else
                            "interface" if s.phase == "interface" else f"{s.phase} {s.check}".strip())
            s.evidence = rb.get("message") or ""
            if s.phase == "shadow" and s.shadow.get("comparisons") is not None:
                s.evidence += f" ({_num(s.shadow['comparisons'], '.0f')} comparisons)"
            if s.phase == "analysis":
                last = next((a for a in reversed(analyses) if a["outcome"] == "Failed"), None)
                s.evidence = (last or {}).get("message") or s.evidence
                s.evidence += f" ({s.analyses_failed} canary analyses failed)"
        elif "Promoted" in kinds:
            s.outcome = "promoted"
            s.decided_by = "every check passed"
            steps = f"{s.analyses_passed} canary steps passed"
            s.evidence = "; ".join(x for x in (gate_text(s.gate), shadow_text(s.shadow), steps) if x)
        elif "Serving" in kinds:
            s.outcome = "served first"
        out.append(s)
    return out


def rich_table(rows: list[VersionStory], title: str):
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_lines=True)
    where = min(52, max([len(s.where) for s in rows] + [24]))  # a UI address on one line; a report's URI folded
    for name, kw in (("version", {"no_wrap": True}), ("what it is", {"max_width": 24}),
                     ("outcome", {"max_width": 21}), ("deciding check", {"max_width": 34}),
                     ("what the check saw", {"max_width": 44}), ("client answers", {"justify": "right"}),
                     ("rollout report in MLflow", {"overflow": "fold", "min_width": where})):
        t.add_column(name, **kw)
    for s in rows:
        served = str(s.client_answers) + (f"\n+{s.client_errors} errors" if s.client_errors else "")
        t.add_row(f"v{s.version}", s.what, s.outcome, s.decided_by or "-", s.evidence or "-", served,
                  s.where)
    return t


def summary(rows: list[VersionStory], **extra) -> dict:
    """The JSON summary (`modelops demo --json PATH`)."""
    versions = {}
    for s in rows:
        d = asdict(s)
        d["where"] = s.where
        versions[s.version] = d
    return {**extra, "versions": versions}
