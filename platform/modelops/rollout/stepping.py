"""The engine's shared moves: the pass being decided (`Step`) and the transitions every phase
ends in (start traffic, fail, roll back, promote), used by `engine` and by the phases before
traffic (`gate`, `shadow`). Pure, like the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from . import journal
from .actions import Hold, Notify, Promote, RollBack, RolloutPolicy, SetWeight
from .state import Notification, Phase, RolledBack, RolloutState


@dataclass
class Step:
    state: RolloutState
    policy: RolloutPolicy
    now: datetime
    generation: int = 0
    actions: list = field(default_factory=list)
    interface_note: str = ""  # compatible interface changes of the canary being started

    def set(self, **changes) -> None:
        self.state = self.state.evolve(**changes)

    def hold(self, reason: str, message: str) -> None:
        self.set(reason=reason, message=message)
        self.actions.append(Hold(reason, message))

    def log(self, entry: dict) -> None:
        """Append a record to the canary's journal (`modelops.rollout.journal`)."""
        self.set(journal=journal.append(self.state.journal, entry))

    def log_analysis(self, phase: str, result) -> None:
        """Journal a counted analysis (`phase`: shadow | step) at the canary's current weight and step."""
        st = self.state
        self.log(journal.analysis_entry(phase, result, weight=st.weight, step=st.step if phase == "step" else None,
                                        at=self.now))

    def notify(self, event: str, *, reason: str, message: str, check: str | None = None) -> None:
        s = self.state
        seq = s.hook_seq + 1
        n = Notification(seq=seq, event=event, version=s.version or "",
                         stable_version=s.stable_version, weight=s.weight, at=self.now,
                         reason=reason, message=message, check=check)
        outbox = s.outbox
        if any(event in w.events for w in self.policy.webhooks):
            outbox = (outbox + (n,))[-self.policy.max_outbox:]
        self.set(hook_seq=seq, outbox=outbox)
        self.actions.append(Notify(n))


def begin_traffic(s: Step, superseded: str | None = None) -> None:
    st = s.state
    weight = s.policy.steps[0]
    s.set(phase=Phase.PROGRESSING, weight=weight, step=0, gate=None, last_step_at=s.now,
          next_analysis_at=s.now + s.policy.interval, reason="Progressing",
          message=f"canary v{st.version} at {weight}% (step 1/{len(s.policy.steps)})")
    s.actions.append(SetWeight(st.version, weight, 0, st.stable_version))
    why = f"; supersedes canary v{superseded}" if superseded else ""
    noted = f" (interface: {s.interface_note})" if s.interface_note else ""
    s.notify("Started", reason="Restarted" if superseded else "Started",
             message=f"canary v{st.version} started at {weight}% against stable v{st.stable_version}{why}{noted}")


def fail(s: Step, reason: str, message: str, check: str | None) -> None:
    s.notify("Failed", reason=reason, message=message, check=check)
    roll_back(s, reason, message, check=check)


def roll_back(s: Step, reason: str, message: str, check: str | None = None, notify: bool = True) -> None:
    st = s.state
    version = st.version or ""
    s.actions.append(RollBack(version, st.stable_version, reason, message, check))
    if notify:
        s.notify("RolledBack", reason=reason, message=message, check=check)
    s.set(phase=Phase.ROLLED_BACK, version=None, weight=0, step=0, gate=None, next_analysis_at=None,
          reason=reason, message=f"v{version} rolled back: {message}; v{st.stable_version} serves 100%",
          rolled_back=RolledBack(version, s.generation, s.now, reason, check))


def finish_promotion(s: Step, version: str, reason: str, message: str, notify: bool = True,
                     phase: Phase = Phase.PROMOTED) -> None:
    previous = s.state.stable_version
    s.actions.append(Promote(version, previous, reason))
    # The notification reads: `version` at 100%, stable (before) `previous`.
    s.set(version=version, weight=100)
    if notify:
        s.notify("Promoted", reason=reason, message=message)
    s.set(phase=phase, stable_version=version, version=None, weight=0, step=0, gate=None,
          next_analysis_at=None, reason="Promoted" if reason in ("Analysis", "Manual") else reason,
          message=message)


# --- webhooks' outbox ------------------------------------------------------------------------
def prune(outbox: tuple[Notification, ...], delivered: dict[str, int],
          policy: RolloutPolicy) -> tuple[Notification, ...]:
    """Keep what some subscribed webhook has not acknowledged yet."""
    return tuple(n for n in outbox
                 if any(n.event in w.events and delivered.get(w.name, 0) < n.seq for w in policy.webhooks))
