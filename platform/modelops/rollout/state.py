"""The rollout's persisted state: a frozen value that maps 1:1 to `status.canary`.

Everything a rollout needs to resume lives here, never only in memory: the phase, the canary's
version, weight and step, the analysis counters and times, the gate it waits on, the last
rolled-back version, and the webhook outbox (notifications with a sequence number, and per
webhook the last one it acknowledged), and the canary's journal (what each counted analysis and
the performance gate measured, for the rollout report). `to_status()` / `from_status()` round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from ..deployment import schema


class Phase(str, Enum):
    IDLE = "Idle"                            # nothing serves yet
    STABLE = "Stable"                        # one version serves all traffic (first deployment, replace)
    WAITING_FOR_GATE = "WaitingForGate"      # canary chosen; a preRollout gate holds it at 0%
    PERFORMANCE_GATE = "PerformanceGate"     # at 0%: the load tests of the candidate and the stable run
    SHADOW = "Shadow"                        # at 0%: the stable mirrors requests to it; answers compared
    PROGRESSING = "Progressing"              # canary at a step weight, analysed every interval
    PAUSED = "Paused"                        # spec.rollout.paused: weight held, no analysis
    AWAITING_PROMOTION = "AwaitingPromotion"  # every step passed; a confirmPromotion gate holds it
    PROMOTED = "Promoted"                    # the canary became the stable version
    ROLLED_BACK = "RolledBack"               # the canary was removed; the stable version serves

    @property
    def active(self) -> bool:
        """A canary exists (it may hold 0% while waiting for a gate)."""
        return self in _ACTIVE


# Defined once, in the CRD's schema (modelops.deployment.schema), which status.canary follows.
_ACTIVE = frozenset(Phase(p) for p in schema.ACTIVE_ROLLOUT_PHASES)
EVENTS = tuple(schema.HOOK_EVENTS)
GATE_TYPES = tuple(schema.GATE_TYPES)


# --- time ------------------------------------------------------------------------------------
def utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: give an aware (UTC) time")
    return value.astimezone(timezone.utc)


def format_time(value: datetime | None) -> str | None:
    """RFC 3339 with `Z`; microseconds only when present, so parse(format(t)) == t."""
    if value is None:
        return None
    text = utc(value).isoformat()
    return text.replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return utc(value)
    return utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


# --- parts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notification:
    """One rollout transition, numbered; delivered to every webhook subscribed to its event."""

    seq: int
    event: str  # one of EVENTS
    version: str  # the canary version it is about
    stable_version: str | None
    weight: int
    at: datetime
    reason: str = ""
    message: str = ""
    check: str | None = None  # the deciding analysis check, when one decided

    def to_status(self) -> dict:
        out = {"seq": self.seq, "event": self.event, "version": self.version, "weight": self.weight,
               "at": format_time(self.at), "reason": self.reason, "message": self.message}
        if self.stable_version is not None:
            out["stableVersion"] = self.stable_version
        if self.check:
            out["check"] = self.check
        return out

    @classmethod
    def from_status(cls, raw: dict) -> Notification:
        return cls(seq=int(raw["seq"]), event=str(raw["event"]), version=str(raw.get("version", "")),
                   stable_version=raw.get("stableVersion"), weight=int(raw.get("weight", 0)),
                   at=parse_time(raw.get("at")), reason=raw.get("reason", ""),
                   message=raw.get("message", ""), check=raw.get("check") or None)


@dataclass(frozen=True)
class GateWait:
    """The gate a rollout waits on, when it last asked, and what the answer was."""

    type: str  # preRollout | confirmPromotion
    version: str
    asked_at: datetime | None = None
    open: bool | None = None  # None: no answer yet
    message: str = ""

    def to_status(self) -> dict:
        out: dict = {"type": self.type, "version": self.version, "message": self.message}
        if self.asked_at is not None:
            out["askedAt"] = format_time(self.asked_at)
        if self.open is not None:
            out["open"] = self.open
        return out

    @classmethod
    def from_status(cls, raw: dict | None) -> GateWait | None:
        if not raw or not raw.get("type"):
            return None
        return cls(type=raw["type"], version=str(raw.get("version", "")),
                   asked_at=parse_time(raw.get("askedAt")), open=raw.get("open"),
                   message=raw.get("message", ""))


@dataclass(frozen=True)
class RolledBack:
    """The last rolled-back version: not canaried again for the same generation."""

    version: str
    generation: int
    at: datetime
    reason: str
    check: str | None = None

    def to_status(self) -> dict:
        out = {"version": self.version, "generation": self.generation, "at": format_time(self.at),
               "reason": self.reason}
        if self.check:
            out["check"] = self.check
        return out

    @classmethod
    def from_status(cls, raw: dict | None) -> RolledBack | None:
        if not raw or not raw.get("version"):
            return None
        return cls(version=str(raw["version"]), generation=int(raw.get("generation", 0)),
                   at=parse_time(raw.get("at")), reason=raw.get("reason", ""),
                   check=raw.get("check") or None)


RUNNING = "Running"  # a gate attempt or a shadow phase not decided yet (else Passed | Failed | Inconclusive)


def _decided(raw: dict, at: datetime | None) -> dict:
    return {**raw, "decidedAt": format_time(at)} if at is not None else raw


@dataclass(frozen=True)
class PerformanceGateRecord:
    """The performance gate of `version`: its attempt, and once obtained the two load tests'
    numbers and the verdict (kept: a restart never runs a decided gate again)."""

    version: str
    attempt: int = 1
    requested_at: datetime | None = None  # this attempt starts at (or started at) this time
    outcome: str = RUNNING  # Running | Passed | Failed | Inconclusive (the last attempt gave no verdict)
    check: str | None = None  # the deciding check of a Failed or Inconclusive outcome
    message: str = ""
    stable: dict | None = None  # {requests, errors, throughputRps, p50Ms, p99Ms} of the stable's test
    candidate: dict | None = None  # the same for the candidate's
    decided_at: datetime | None = None

    def to_status(self) -> dict:
        out: dict = {"version": self.version, "attempt": self.attempt, "outcome": self.outcome,
                     "message": self.message}
        for key, value in (("requestedAt", format_time(self.requested_at)), ("check", self.check),
                           ("stable", self.stable), ("candidate", self.candidate)):
            if value:
                out[key] = value
        return _decided(out, self.decided_at)

    @classmethod
    def from_status(cls, raw: dict | None) -> PerformanceGateRecord | None:
        if not raw or not raw.get("version"):
            return None
        return cls(version=str(raw["version"]), attempt=int(raw.get("attempt") or 1),
                   requested_at=parse_time(raw.get("requestedAt")), outcome=raw.get("outcome") or RUNNING,
                   check=raw.get("check") or None, message=raw.get("message", ""),
                   stable=raw.get("stable") or None, candidate=raw.get("candidate") or None,
                   decided_at=parse_time(raw.get("decidedAt")))


@dataclass(frozen=True)
class ShadowRecord:
    """The shadow phase of `version`: since when its requests are mirrored, at what share, the
    last shadow analysis' numbers and, once decided, the verdict (Passed: traffic steps began)."""

    version: str
    started_at: datetime
    percent: int
    outcome: str = RUNNING  # Running | Passed | Failed | Inconclusive (maxDuration without enough comparisons)
    check: str | None = None
    message: str = ""
    values: dict | None = None  # {comparisons, agreement, maxAbsDiff, cosine} of the last shadow analysis
    decided_at: datetime | None = None

    def to_status(self) -> dict:
        out: dict = {"version": self.version, "startedAt": format_time(self.started_at), "percent": self.percent,
                     "outcome": self.outcome, "message": self.message}
        if self.check:
            out["check"] = self.check
        if self.values:
            out["values"] = dict(self.values)
        return _decided(out, self.decided_at)

    @classmethod
    def from_status(cls, raw: dict | None) -> ShadowRecord | None:
        if not raw or not raw.get("version") or not raw.get("startedAt"):
            return None
        return cls(version=str(raw["version"]), started_at=parse_time(raw["startedAt"]),
                   percent=int(raw.get("percent") or 0), outcome=raw.get("outcome") or RUNNING,
                   check=raw.get("check") or None, message=raw.get("message", ""),
                   values=dict(raw["values"]) if raw.get("values") else None,
                   decided_at=parse_time(raw.get("decidedAt")))


@dataclass(frozen=True)
class Traffic:
    """What should serve: the stable version and, when a canary exists, its version and weight."""

    stable: str | None
    canary: str | None = None
    weight: int = 0


# --- the state -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutState:
    phase: Phase = Phase.IDLE
    stable_version: str | None = None
    version: str | None = None  # the canary's version; None without a canary
    weight: int = 0  # percent of traffic on the canary
    step: int = 0  # index into the policy's steps
    failed_checks: int = 0  # failed analyses of this canary
    inconclusive_checks: int = 0  # inconclusive analyses in a row
    started_at: datetime | None = None
    last_step_at: datetime | None = None  # last weight change
    last_analysis_at: datetime | None = None
    next_analysis_at: datetime | None = None
    reason: str = ""
    message: str = ""
    analysis: dict | None = None  # AnalysisResult.to_status() of the last analysis counted
    gate: GateWait | None = None
    rolled_back: RolledBack | None = None
    hook_seq: int = 0  # sequence number of the last notification issued
    delivered: dict[str, int] = field(default_factory=dict)  # webhook name -> last seq it acknowledged
    outbox: tuple[Notification, ...] = ()  # issued, not yet acknowledged by every subscriber
    performance_gate: PerformanceGateRecord | None = None  # the current (or last) canary's gate
    shadow: ShadowRecord | None = None  # the current (or last) canary's shadow phase
    journal: tuple[dict, ...] = ()  # the current (or last) canary's counted analyses and gate verdicts (journal.py)

    @property
    def traffic(self) -> Traffic:
        """The desired traffic split: apply it idempotently on every reconcile."""
        if self.phase.active and self.version is not None:
            return Traffic(stable=self.stable_version, canary=self.version, weight=self.weight)
        return Traffic(stable=self.stable_version)

    @property
    def mirroring(self) -> bool:
        """The stable version should mirror requests to the canary: its shadow phase began and
        the rollout is still on (mirroring stops when it is promoted or rolled back)."""
        sh = self.shadow
        return (self.phase.active and self.version is not None and sh is not None and sh.version == self.version
                and self.phase not in (Phase.WAITING_FOR_GATE, Phase.PERFORMANCE_GATE))

    def refuses(self, version: str | None, generation: int) -> bool:
        """`version` was rolled back in this generation: it is not tried again until the spec
        changes (the engine's rule; local mode asks it too, to not start a predictor for it)."""
        rb = self.rolled_back
        return rb is not None and rb.version == version and rb.generation == generation

    def evolve(self, **changes) -> RolloutState:
        return replace(self, **changes)

    def to_status(self) -> dict:
        """The `status.canary` dict (camelCase; absent values left out)."""
        out: dict[str, Any] = {"phase": self.phase.value, "weight": self.weight, "step": self.step,
                               "failedChecks": self.failed_checks,
                               "inconclusiveChecks": self.inconclusive_checks,
                               "hookSeq": self.hook_seq}
        optional = {
            "stableVersion": self.stable_version, "version": self.version,
            "startedAt": format_time(self.started_at), "lastStepAt": format_time(self.last_step_at),
            "lastAnalysisAt": format_time(self.last_analysis_at),
            "nextAnalysisAt": format_time(self.next_analysis_at),
            "reason": self.reason or None, "message": self.message or None,
            "analysis": self.analysis, "gate": self.gate.to_status() if self.gate else None,
            "rolledBack": self.rolled_back.to_status() if self.rolled_back else None,
            "delivered": dict(self.delivered) if self.delivered else None,
            "outbox": [n.to_status() for n in self.outbox] if self.outbox else None,
            "performanceGate": self.performance_gate.to_status() if self.performance_gate else None,
            "shadow": self.shadow.to_status() if self.shadow else None,
            "journal": [dict(e) for e in self.journal] if self.journal else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    @classmethod
    def from_status(cls, raw: dict | None) -> RolloutState:
        """The state from `status.canary`; an empty or missing dict is a fresh (Idle) state."""
        if not raw:
            return cls()
        try:
            phase = Phase(raw.get("phase") or Phase.IDLE.value)
        except ValueError:
            phase = Phase.IDLE
        return cls(
            phase=phase,
            stable_version=_opt_str(raw.get("stableVersion")),
            version=_opt_str(raw.get("version")),
            weight=int(raw.get("weight") or 0),
            step=int(raw.get("step") or 0),
            failed_checks=int(raw.get("failedChecks") or 0),
            inconclusive_checks=int(raw.get("inconclusiveChecks") or 0),
            started_at=parse_time(raw.get("startedAt")),
            last_step_at=parse_time(raw.get("lastStepAt")),
            last_analysis_at=parse_time(raw.get("lastAnalysisAt")),
            next_analysis_at=parse_time(raw.get("nextAnalysisAt")),
            reason=raw.get("reason") or "",
            message=raw.get("message") or "",
            analysis=raw.get("analysis") or None,
            gate=GateWait.from_status(raw.get("gate")),
            rolled_back=RolledBack.from_status(raw.get("rolledBack")),
            hook_seq=int(raw.get("hookSeq") or 0),
            delivered={str(k): int(v) for k, v in (raw.get("delivered") or {}).items()},
            outbox=tuple(Notification.from_status(n) for n in raw.get("outbox") or ()),
            performance_gate=PerformanceGateRecord.from_status(raw.get("performanceGate")),
            shadow=ShadowRecord.from_status(raw.get("shadow")),
            journal=tuple(dict(e) for e in raw.get("journal") or () if isinstance(e, dict)),
        )


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
