"""MLflow as the rollout history: model-version tags per deployment, and the promoted alias.

Each model version touched by a rollout gets, per deployment (key `modelops.deployment.<ns>.<name>`):
- `<key>`: its state there in words: `canary 10% since 2025-01-01T12:00:00Z`,
  `promoted 2025-01-01T12:03:00Z`, `rolled back 2025-01-01T12:02:00Z (successRate: 0.8 < min 0.99)`,
  `replaced by v3 2025-...`, `serving since 2025-...` (first deployment or strategy replace);
- `<key>.history`: a JSON list of `{state, at, weight?, reason?, check?, message?}`, newest last,
  trimmed to fit MLflow's tag value limit.
- `<key>.performanceGate` and `<key>.shadow`: the performance gate's and the shadow phase's result as
  JSON: `{outcome, check?, message, ...numbers}` (gate: p99Ms, stableP99Ms, throughputRps,
  stableThroughputRps, throughputRatio, errors, requests; shadow: comparisons, agreement,
  maxAbsDiff (at the quantile), worstAbsDiff, cosine), and an entry `performance gate passed|failed|inconclusive`,
  `shadow passed|failed|inconclusive` in the history.
`spec.rollout.promoteAlias` (e.g. `production`) moves to a version when it is promoted. So the
MLflow UI tells which version serves where, since when and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from .engine import PhaseResult, Promote, RollBack, SetWeight
from .state import format_time

TAG_PREFIX = "modelops.deployment."
MAX_TAG_VALUE = 5000  # MLflow's limit for model-version tag values


def deployment_key(namespace: str, name: str) -> str:
    return f"{TAG_PREFIX}{namespace}.{name}"


@dataclass(frozen=True)
class Entry:
    """One change of a version's state in one deployment."""

    version: str
    state: str  # canary 10% | promoted | rolled back | replaced by vN | serving
    at: datetime
    reason: str = ""
    check: str | None = None
    message: str = ""
    weight: int | None = None
    extra: tuple[tuple[str, str], ...] = ()  # more tags, by suffix of the deployment key (".shadow": JSON)
    replaces_state: bool = True  # whether it is the version's state in words (the `<key>` tag)

    @property
    def text(self) -> str:
        when = format_time(self.at)
        if self.state.startswith("canary") or self.state == "serving":
            text = f"{self.state} since {when}"
        else:
            text = f"{self.state} {when}"
        if (self.state == "rolled back" or not self.replaces_state) and (self.check or self.message):
            text += f" ({self.message or self.check})"
        return text[:MAX_TAG_VALUE]

    def to_json(self) -> dict:
        out = {"state": self.state, "at": format_time(self.at)}
        for key in ("reason", "check", "message", "weight"):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = value if key != "message" else value[:300]
        return out


def entries(actions: Iterable, now: datetime) -> list[Entry]:
    """The history entries the engine's transition actions stand for (pure)."""
    out: list[Entry] = []
    for a in actions:
        if isinstance(a, SetWeight):
            out.append(Entry(a.version, f"canary {a.weight}%", now, "StepAdvanced" if a.step else "Started",
                             weight=a.weight))
        elif isinstance(a, Promote):
            state = "promoted" if a.reason in ("Analysis", "Manual") else "serving"
            out.append(Entry(a.version, state, now, a.reason, weight=100))
            if a.previous and a.previous != a.version:
                out.append(Entry(a.previous, f"replaced by v{a.version}", now, a.reason, weight=0))
        elif isinstance(a, RollBack) and a.version:
            out.append(Entry(a.version, "rolled back", now, a.reason, a.check, a.message, weight=0))
        elif isinstance(a, PhaseResult) and a.version:
            what = "performance gate" if a.phase == "performanceGate" else "shadow"
            doc = {"outcome": a.outcome, **({"check": a.check} if a.check else {}), "message": a.message[:500],
                   **a.values}
            out.append(Entry(a.version, f"{what} {a.outcome.lower()}", now, a.phase, a.check, a.message, weight=0,
                             extra=((f".{a.phase}", json.dumps(doc, separators=(",", ":"))[:MAX_TAG_VALUE]),),
                             replaces_state=False))
    return out


def _history(previous: str | None, entry: Entry) -> str:
    try:
        items = json.loads(previous) if previous else []
        if not isinstance(items, list):
            items = []
    except ValueError:
        items = []
    items.append(entry.to_json())
    text = json.dumps(items, separators=(",", ":"))
    while len(text) > MAX_TAG_VALUE and len(items) > 1:
        items.pop(0)
        text = json.dumps(items, separators=(",", ":"))
    return text


def record(registry, model_name: str, namespace: str, name: str, entry: Entry) -> dict[str, str]:
    """Write one entry's tags on its model version; returns the tags written."""
    key = deployment_key(namespace, name)
    current = registry.get_version_tags(model_name, entry.version)
    tags = {f"{key}.history": _history(current.get(f"{key}.history"), entry)}
    if entry.replaces_state:
        tags[key] = entry.text
    tags.update({f"{key}{suffix}": value for suffix, value in entry.extra})
    registry.set_version_tags(model_name, entry.version, tags)
    return tags


def record_actions(registry, model_name: str, namespace: str, name: str, actions: Iterable,
                   now: datetime, promote_alias: str | None = None) -> list[Entry]:
    """Tag every version a step's actions touched, and move `promote_alias` on a promotion."""
    written = entries(actions, now)
    for entry in written:
        record(registry, model_name, namespace, name, entry)
    if promote_alias:
        for a in actions:
            if isinstance(a, Promote):
                registry.set_alias(model_name, promote_alias, a.version)
    return written


@dataclass(frozen=True)
class RegistryHistory:
    """The driver's `History` for one deployment, written straight to MLflow (the operator; local
    mode queues the same call on a worker so a slow MLflow never holds its loop)."""

    registry: object
    model_name: str
    namespace: str
    name: str
    promote_alias: str | None = None

    def record(self, moves: tuple, now: datetime) -> None:
        record_actions(self.registry, self.model_name, self.namespace, self.name, moves, now,
                       promote_alias=self.promote_alias)
