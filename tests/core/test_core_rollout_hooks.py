"""Webhooks and gates against a real local HTTP receiver.

The engine produces the transitions of a real rollout; `WebhookDispatcher` POSTs them over HTTP
to a `http.server` receiver that refuses the first attempts; acknowledgements go back into the
state through `acknowledge()` and the status, as the operator does.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from modelops.deployment.spec import AnalysisSpec
from modelops.rollout import (Observations, Phase, RolloutPolicy, RolloutState, WebhookSubscription,
                              acknowledge, analyse, pending, step)
from modelops.rollout.analysis import Target
from modelops.rollout.engine import Analyse
from modelops.rollout.hooks import (DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, Gate, Webhook,
                                    WebhookDispatcher, backoff, call_gates, gate_verdict, sign, verify)
from webhook_receiver import Receiver

from modelops.local.ports import free_port

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
SECRET = b"s3cr3t-hmac-key"


@pytest.fixture
def receiver():
    r = Receiver(fail_first=2)
    yield r
    r.close()


class Row:
    def query(self, q):
        from modelops.rollout.analysis import ClientErrorRate, LatencyQuantile, RequestCount, SuccessRate

        return {RequestCount: 100.0, SuccessRate: 1.0, ClientErrorRate: 0.0, LatencyQuantile: 0.003}[type(q)]


def rollout_ticks(pol: RolloutPolicy, status: dict, times: list[float], obs=Observations(target="2")):
    """Yield the persisted status after each reconcile at T0 + t*interval."""
    for t in times:
        when = T0 + timedelta(seconds=pol.interval_seconds * t)
        o = obs
        for _ in range(3):
            state, actions = step(RolloutState.from_status(status), o, pol, when)
            status = state.to_status()
            asks = [a for a in actions if isinstance(a, Analyse)]
            if not asks:
                break
            a = asks[0]
            o = Observations(target=o.target, analysis=analyse(
                AnalysisSpec(), Row(), Target("m", a.version, a.stable_version, a.window_seconds, a.weight), when))
        yield status


def test_targets_from_spec():
    from modelops.deployment.spec import parse_spec
    from modelops.rollout.hooks import gates_from_spec, webhooks_from_spec

    spec = parse_spec({"model": {"name": "m", "version": "1"}, "hooks": {
        "webhooks": [{"name": "a", "url": "http://x", "secretRef": {"name": "s", "key": "k"}},
                     {"name": "b", "url": "http://y", "events": ["Failed"]}],
        "gates": [{"name": "g", "url": "http://z", "type": "preRollout"}]}})
    secrets = {("s", "k"): b"key"}
    hooks = webhooks_from_spec(spec.hooks, lambda ref: secrets[(ref.name, ref.key)])
    assert hooks == [Webhook("a", "http://x", frozenset({"Started", "StepAdvanced", "Promoted", "RolledBack",
                                                         "Failed", "ShadowStarted", "ShadowPassed", "ShadowFailed",
                                                         "PerformanceGatePassed", "PerformanceGateFailed"}), b"key"),
                     Webhook("b", "http://y", frozenset({"Failed"}), None)]
    assert gates_from_spec(spec.hooks, lambda ref: None) == [Gate("g", "http://z", "preRollout", None)]


def test_pure_parts():
    body = b'{"a":1}'
    assert verify(SECRET, body, sign(SECRET, body))
    assert not verify(SECRET, body + b" ", sign(SECRET, body)) and not verify(SECRET, body, None)
    assert [backoff(i, 0.5, 3) for i in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3, 3]
    assert gate_verdict("preRollout", "2", [("a", 200, ""), ("b", 204, "")]).open
    closed = gate_verdict("preRollout", "2", [("a", 200, ""), ("b", 409, "not yet"), ("c", None, "refused")])
    assert not closed.open and "b: 409 not yet" in closed.message and "c: no answer refused" in closed.message


def test_every_transition_once_in_order_signed_despite_failing_first_attempts(receiver):
    pol = RolloutPolicy(steps=(10, 50, 100), interval_seconds=60, webhooks=(
        WebhookSubscription("audit"), WebhookSubscription("ends", frozenset({"Promoted", "RolledBack", "Failed"}))))
    hooks = [Webhook("audit", receiver.url + "/audit", frozenset(pol.webhooks[0].events), SECRET),
             Webhook("ends", receiver.url + "/ends", pol.webhooks[1].events, None)]
    box = {"status": RolloutState(phase=Phase.STABLE, stable_version="1").to_status()}

    def on_delivered(deployment, hook, seq):
        box["status"] = acknowledge(RolloutState.from_status(box["status"]), hook, seq, pol).to_status()

    async def main():
        d = WebhookDispatcher(on_delivered=on_delivered, base_delay=0.02, max_delay=0.1)
        for status in rollout_ticks(pol, box["status"], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]):
            # the reconciler persists the engine's state, keeping acknowledgements made meanwhile
            state = RolloutState.from_status(status)
            acked = RolloutState.from_status(box["status"]).delivered
            for hook, seq in acked.items():
                state = acknowledge(state, hook, seq, pol)
            box["status"] = state.to_status()
            d.submit("ml/fraud", "fraud-detector", hooks, pending(state, pol), state.delivered)
            await asyncio.sleep(0.01)
        await d.join(timeout=30)
        await d.aclose()
        return d

    d = asyncio.run(main())
    audit = receiver.accepted("/audit")
    events = [json.loads(r["body"]) for r in audit]
    assert [e["event"] for e in events] == ["Started", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [(e["version"], e["weight"]) for e in events] == [("2", 10), ("2", 50), ("2", 100), ("2", 100)]
    for r in audit:
        assert verify(SECRET, r["body"], r["headers"][SIGNATURE_HEADER])
        assert r["headers"][EVENT_HEADER] == json.loads(r["body"])["event"]
        assert r["attempt"] == 3  # two refused attempts, then delivered
    ends = receiver.accepted("/ends")
    assert [json.loads(r["body"])["event"] for r in ends] == ["Promoted"]
    assert SIGNATURE_HEADER not in ends[0]["headers"]
    # Each delivery kept its id across attempts, and nothing was accepted twice.
    ids = [(r["path"], r["headers"][DELIVERY_HEADER]) for r in receiver.accepted()]
    assert len(ids) == len(set(ids)) == 5
    assert d.failures == []
    final = RolloutState.from_status(box["status"])
    assert final.outbox == () and final.delivered == {"audit": 4, "ends": 4}


def test_restart_resumes_after_the_last_acknowledged_notification(receiver):
    receiver.fail_first = 0
    pol = RolloutPolicy(interval_seconds=60, webhooks=(WebhookSubscription("audit"),))
    hooks = [Webhook("audit", receiver.url + "/audit", frozenset(pol.webhooks[0].events), SECRET)]
    *_, status = rollout_ticks(pol, RolloutState(phase=Phase.STABLE, stable_version="1").to_status(),
                               [0, 1, 2, 3])
    state = RolloutState.from_status(status)
    assert [n.seq for n in state.outbox] == [1, 2, 3, 4]
    # The first operator delivered #1 and #2 and persisted their acknowledgement, then died.
    state = acknowledge(acknowledge(state, "audit", 1, pol), "audit", 2, pol)
    status = state.to_status()

    async def restarted():
        acks = []
        d = WebhookDispatcher(on_delivered=lambda dep, h, seq: acks.append(seq), base_delay=0.01)
        restored = RolloutState.from_status(status)
        for _ in range(3):  # several reconciles hand over the same outbox
            d.submit("ml/fraud", "m", hooks, pending(restored, pol), restored.delivered)
        await d.join(timeout=10)
        await d.aclose()
        return acks

    assert asyncio.run(restarted()) == [3, 4]
    assert [json.loads(r["body"])["seq"] for r in receiver.accepted()] == [3, 4]


def test_a_dead_receiver_never_blocks_another_deployment(receiver):
    receiver.fail_first = 0
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    pol = RolloutPolicy(interval_seconds=60, webhooks=(WebhookSubscription("audit"),))
    *_, status = rollout_ticks(pol, RolloutState(phase=Phase.STABLE, stable_version="1").to_status(), [0, 1])
    state = RolloutState.from_status(status)

    async def main():
        d = WebhookDispatcher(base_delay=0.05, max_delay=0.2)
        d.submit("ml/broken", "m", [Webhook("audit", dead, frozenset({"Started", "StepAdvanced"}))],
                 pending(state, pol))
        t = time.monotonic()
        d.submit("ml/fine", "m", [Webhook("audit", receiver.url + "/fine", frozenset({"Started", "StepAdvanced"}))],
                 pending(state, pol))
        while len(receiver.accepted("/fine")) < 2:
            await asyncio.sleep(0.01)
            assert time.monotonic() - t < 5
        retried = d.attempts[("ml/broken", "audit", 1)]
        await d.aclose()
        return retried

    assert asyncio.run(main()) >= 1
    assert [json.loads(r["body"])["event"] for r in receiver.accepted("/fine")] == ["Started", "StepAdvanced"]


def test_gates_open_on_2xx_and_hold_otherwise(receiver):
    receiver.fail_first = 0

    async def ask(gates):
        async with httpx.AsyncClient() as client:
            return await call_gates(client, gates, "confirmPromotion", deployment="ml/fraud", model="m",
                                    version="2", stable_version="1", weight=100, timeout=3)

    ok = Gate("qa", receiver.url + "/qa", "confirmPromotion", SECRET)
    other_type = Gate("pre", f"http://127.0.0.1:{free_port()}/x", "preRollout")
    result = asyncio.run(ask([ok, other_type]))
    assert result.open and result.version == "2" and result.type == "confirmPromotion"
    sent = receiver.requests[-1]
    assert verify(SECRET, sent["body"], sent["headers"][SIGNATURE_HEADER])
    assert json.loads(sent["body"]) == {"deployment": "ml/fraud", "model": "m", "gate": "confirmPromotion",
                                        "version": "2", "stableVersion": "1", "weight": 100}
    receiver.status = 409
    refused = asyncio.run(ask([ok]))
    assert not refused.open and "qa: 409" in refused.message
    receiver.status = 200
    down = asyncio.run(ask([ok, Gate("gone", f"http://127.0.0.1:{free_port()}/g", "confirmPromotion")]))
    assert not down.open and "gone: no answer" in down.message
