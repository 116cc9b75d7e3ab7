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
- `<key>.report`: when a canary ends (promoted by analysis or by hand, rolled back for any reason),
  the artifact URI of its rollout report's JSON (`modelops.rollout.report`): `report.json` and
  `report.png` are logged into the candidate version's run under
  `modelops-rollout/<ns>.<name>/<canary start, %Y%m%dT%H%M%SZ>/`. A version registered without a
  run gets `no MLflow run to log the report to ...` instead (no run is created for it); a report
  that could not be logged (artifact store refused, MLflow away) gets `report not logged: <why>`
  where the tag can still be written. A report never fails the history's other writes.
`spec.rollout.promoteAlias` (e.g. `production`) moves to a version when it is promoted. So the
MLflow UI tells which version serves where, since when and why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from . import report as report_mod
from .engine import PhaseResult, Promote, RollBack, SetWeight
from .state import RolloutState, format_time, parse_time

log = logging.getLogger(__name__)

TAG_PREFIX = "modelops.deployment."
MAX_TAG_VALUE = 5000  # MLflow's limit for model-version tag values
REPORT_SUFFIX = ".report"
NO_RUN = "no MLflow run to log the report to: v{version} was registered without a run"


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


def log_report(registry, model_name: str, namespace: str, name: str, state: RolloutState, ending,
               now: datetime) -> str:
    """Build the rollout report of the canary `ending` ended, log `report.json` and `report.png`
    into the candidate version's run and tag the version `<key>.report` with the JSON's artifact
    URI; returns that tag's value. Never raises: a report that cannot be logged is said in the tag
    (when MLflow takes it) and in the log, and costs the rollout and its other tags nothing."""
    key = deployment_key(namespace, name)
    version = ending.version
    try:
        doc = report_mod.build_report(state, ending, deployment=f"{namespace}/{name}", model=model_name, now=now)
        run_id = registry.model_version_run_id(model_name, version)
        if not run_id:
            value = NO_RUN.format(version=version)
        else:
            folder = report_mod.artifact_dir(namespace, name, parse_time(doc["startedAt"]) or now)
            files = {"report.json": json.dumps(doc, indent=1, sort_keys=False).encode(),
                     "report.png": report_mod.render_png(doc)}
            value = f"{registry.log_files(run_id, files, folder)}/report.json"
    except Exception as exc:  # the artifact store refused, MLflow away, a bug: the rollout goes on
        log.warning("rollout report of %s v%s (%s/%s) not logged: %s: %s", model_name, version, namespace, name,
                    type(exc).__name__, exc)
        value = f"report not logged: {type(exc).__name__}: {exc}"
    try:
        registry.set_version_tags(model_name, version, {f"{key}{REPORT_SUFFIX}": value[:MAX_TAG_VALUE]})
    except Exception as exc:
        log.warning("tag %s%s of %s v%s not written: %s: %s", key, REPORT_SUFFIX, model_name, version,
                    type(exc).__name__, exc)
    return value


@dataclass(frozen=True)
class RegistryHistory:
    """The driver's `History` for one deployment, written straight to MLflow (the operator; local
    mode queues the same call on a worker so a slow MLflow never holds its loop)."""

    registry: object
    model_name: str
    namespace: str
    name: str
    promote_alias: str | None = None

    def record(self, moves: tuple, now: datetime, state: RolloutState | None = None) -> None:
        """The transitions' tags and alias; then, with the state persisted with them, the report
        of every canary they end (`log_report`)."""
        record_actions(self.registry, self.model_name, self.namespace, self.name, moves, now,
                       promote_alias=self.promote_alias)
        if state is not None:
            for move in moves:
                if report_mod.is_ending(move):
                    log_report(self.registry, self.model_name, self.namespace, self.name, state, move, now)
