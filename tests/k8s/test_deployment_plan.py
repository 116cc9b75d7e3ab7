"""Status transitions of the pure planner (modelops.deployment.plan)."""

from __future__ import annotations

from dataclasses import replace

from modelops import errors
from modelops.deployment.facts import ApplyService, Convert, Failure, Inputs, Served, ServiceObservation
from modelops.deployment.plan import plan, plan_invalid
from modelops.deployment.spec import parse_spec

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
SPEC = parse_spec({"model": {"name": "fraud", "alias": "champion"}, "predictor": {"gpu": 1}})
OPTS = SPEC.conversion.fingerprint


def served(version: str, options: str = OPTS) -> Served:
    return Served(version=version, onnx_uri=f"s3://m/{version}", storage_uri=f"s3://m/{version}",
                  sha256="ab" * 32, options=options)


def settle(inp: Inputs, *, convert=None, ready=True, url="http://fraud.ml.example.com"):
    """Drive plan() as the operator does: execute each action once, feed the facts back."""
    executed = []
    while True:
        p = plan(inp)
        action = next((a for a in p.actions if type(a) not in {type(x) for x in executed}), None)
        if action is None:
            return p, executed
        executed.append(action)
        if isinstance(action, Convert):
            if isinstance(convert, Exception):
                inp = replace(inp, error=Failure.from_error(convert))
            elif convert == "running":
                inp = replace(inp, converting=True)
            else:
                inp = replace(inp, conversion=served(action.version, action.options))
        elif isinstance(action, ApplyService):
            inp = replace(inp, service=ServiceObservation(
                storage_uri=action.served.storage_uri, ready=ready, url=url if ready else None))


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def ready_status() -> dict:
    p, _ = settle(Inputs(generation=1, spec=SPEC, status={}, now=T0, resolved_version="1"))
    return p.status


def test_create_converts_then_deploys_then_ready():
    p = plan(Inputs(generation=1, spec=SPEC, status={}, now=T0, resolved_version="1"))
    assert p.actions == (Convert(version="1", options=OPTS),)
    assert p.status["phase"] == "Converting"
    assert cond(p.status, "Reconciling")["status"] == "True"

    p, executed = settle(Inputs(generation=1, spec=SPEC, status={}, now=T0, resolved_version="1"), ready=False)
    assert [type(a) for a in executed] == [Convert, ApplyService]
    assert p.status["phase"] == "Deploying"
    assert p.status["stable"]["version"] == "1"
    assert cond(p.status, "Converted")["status"] == "True"

    status = ready_status()
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    assert status["url"] == "http://fraud.ml.example.com"
    assert cond(status, "Ready")["status"] == "True"
    assert cond(status, "Stalled")["status"] == "False"
    assert {e.reason for e in settle(Inputs(1, SPEC, {}, T0, resolved_version="1"))[0].events} >= {"Deployed", "Ready"}


def test_reconciling_unchanged_facts_gives_identical_status_and_no_events():
    status = ready_status()
    again, executed = settle(Inputs(generation=1, spec=SPEC, status=status, now=T1, resolved_version="1"))
    assert again.status == status  # same transition times too: nothing to write
    assert again.events == ()
    assert [type(a) for a in executed] == [ApplyService]  # no conversion: the stable fits


def test_a_pass_without_the_lookup_after_a_cached_conversion_writes_nothing():
    # The pass that found the conversion published says so in its Event; the next pass (an
    # InferenceService event: no MLflow, the stable from the status) plans the same status.
    first = Inputs(generation=1, spec=SPEC, status={}, now=T0, resolved_version="1",
                   conversion=replace(served("1"), cached=True))
    p, _ = settle(first, ready=False)
    converted = next(e for e in p.events if e.reason == "Converted")
    assert converted.message.endswith("(cached)") and "(cached)" not in cond(p.status, "Converted")["message"]
    later = Inputs(generation=1, spec=SPEC, status=p.status, now=T1, resolved_version="1")
    again, _ = settle(later, ready=False)
    assert again.status == p.status and again.events == ()


def test_alias_move_converts_and_deploys_new_version():
    status = ready_status()
    p, executed = settle(Inputs(generation=1, spec=SPEC, status=status, now=T1, resolved_version="2"))
    assert executed[0] == Convert(version="2", options=OPTS)
    assert p.status["stable"]["version"] == "2" and p.status["phase"] == "Ready"
    assert any(e.reason == "Deployed" and "v2" in e.message for e in p.events)


def test_parity_failure_stalls_and_keeps_serving_previous_version():
    status = ready_status()
    p, executed = settle(Inputs(generation=1, spec=SPEC, status=status, now=T1, resolved_version="2"),
                         convert=errors.ParityFailed("max abs diff 0.3 > atol"))
    assert p.status["phase"] == "Failed"
    assert p.status["stable"]["version"] == "1"  # untouched
    assert ApplyService(served("1")) in executed  # observed with the old version only
    stalled = cond(p.status, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ParityFailed"
    assert "still serving fraud v1" in stalled["message"]
    assert cond(p.status, "Converted")["reason"] == "ParityFailed"
    assert p.retry is None
    assert [e.type for e in p.events] == ["Warning"]

    # The next resync of the same generation must not convert again (no retry storm).
    again, executed = settle(Inputs(generation=1, spec=SPEC, status=p.status, now=T1, resolved_version="2"))
    assert not any(isinstance(a, Convert) for a in executed)
    assert again.status == p.status and again.events == ()

    # A spec edit (new generation) is a reason to try again.
    retry, executed = settle(Inputs(generation=2, spec=SPEC, status=p.status, now=T1, resolved_version="2"))
    assert executed[0] == Convert(version="2", options=OPTS)
    assert retry.status["phase"] == "Ready" and "failed" not in retry.status


def test_registry_down_on_create_is_retryable_and_pending():
    p = plan(Inputs(generation=1, spec=SPEC, status={}, now=T0,
                    error=Failure.from_error(errors.RegistryUnavailable("MLflow is down"))))
    assert p.retry is not None and p.retry.reason == "RegistryUnavailable"
    assert p.status["phase"] == "Pending"
    assert cond(p.status, "Reconciling")["reason"] == "RegistryUnavailable"
    assert cond(p.status, "Stalled")["status"] == "False"
    assert p.actions == ()


def test_registry_down_during_resync_keeps_ready():
    status = ready_status()
    p, _ = settle(Inputs(generation=1, spec=SPEC, status=status, now=T1,
                         error=Failure.from_error(errors.RegistryUnavailable("MLflow is down"))))
    assert p.status["phase"] == "Ready"
    assert cond(p.status, "Ready") == cond(status, "Ready")
    assert cond(p.status, "Reconciling")["status"] == "True"
    assert p.retry is not None


def test_model_not_found_stalls_without_retry():
    p = plan(Inputs(generation=1, spec=SPEC, status={}, now=T0,
                    error=Failure.from_error(errors.ModelNotFound("registered model 'fraud' not found"))))
    assert p.status["phase"] == "Failed" and p.retry is None
    assert cond(p.status, "Stalled")["reason"] == "ModelNotFound"


def test_spec_edit_updates_observed_generation():
    status = ready_status()
    spec2 = parse_spec({"model": {"name": "fraud", "alias": "champion"}, "predictor": {"gpu": 2}})
    p, executed = settle(Inputs(generation=2, spec=spec2, status=status, now=T1, resolved_version="1"))
    assert p.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in p.status["conditions"])
    assert [type(a) for a in executed] == [ApplyService]


def test_new_precision_means_new_conversion_of_the_same_version():
    status = ready_status()
    spec2 = parse_spec({"model": {"name": "fraud", "alias": "champion"}, "conversion": {"precision": "fp16"}})
    p, executed = settle(Inputs(generation=2, spec=spec2, status=status, now=T1, resolved_version="1"))
    assert executed[0] == Convert(version="1", options=spec2.conversion.fingerprint)


def test_conversion_job_running_is_converting_without_new_actions():
    p, executed = settle(Inputs(generation=1, spec=SPEC, status={}, now=T0, resolved_version="1"),
                         convert="running")
    assert p.status["phase"] == "Converting" and p.actions == ()
    assert cond(p.status, "Converted")["status"] == "Unknown"


def test_status_refresh_without_resolve_uses_stable():
    status = ready_status()
    p, executed = settle(Inputs(generation=1, spec=SPEC, status=status, now=T1), ready=False)
    assert p.status["phase"] == "Deploying"
    assert [type(a) for a in executed] == [ApplyService]
    assert plan(Inputs(generation=1, spec=SPEC, status={}, now=T1)).status == {}


def test_transition_time_moves_only_on_flip():
    status = ready_status()
    p, _ = settle(Inputs(generation=1, spec=SPEC, status=status, now=T1), ready=False)
    assert cond(p.status, "Ready")["lastTransitionTime"] == T1
    assert cond(p.status, "Stalled")["lastTransitionTime"] == T0


def test_invalid_spec_status():
    p = plan_invalid({}, 3, Failure("InvalidSpec", "spec.model: exactly one", False), T0)
    assert p.status["phase"] == "Failed" and p.status["observedGeneration"] == 3
    assert cond(p.status, "Stalled")["reason"] == "InvalidSpec"
    assert plan_invalid(p.status, 3, Failure("InvalidSpec", "spec.model: exactly one", False), T1).events == ()
