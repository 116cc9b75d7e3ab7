"""Local mode: a candidate that refuses what the serving version accepts is never promoted.

v1 is a good MLP whose ONNX input is `input`; v2 is a good MLP whose ONNX input is called
`features` (a retrained model exported by other code). Client traffic through the router keeps
sending `input`. v2 is refused before any traffic with `InterfaceChanged`; after the file says
`allowInterfaceChange: true` (a new generation), it gets its canary and is rolled back by
`clientErrorsVsStable` within failureLimit intervals. Everything real: MLflow, conversions,
predictors, the router, `modelops local up` as its own process.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from modelops.demo.models import register_renamed_mlp, register_torch_mlp

from test_core_local import FAILURE_LIMIT, INTERVAL, SLACK, Client, LocalUp, _at, _move, manifest, write

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def renamed_model(tracking_uri, mlflow_client) -> str:
    name = f"local-renamed-{uuid.uuid4().hex[:6]}"
    assert [register_torch_mlp(tracking_uri, name, seed=0), register_renamed_mlp(tracking_uri, name, seed=1)] \
        == ["1", "2"]
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    return name


def test_a_renamed_input_is_refused_before_traffic_then_judged_by_client_errors(
        tmp_path, tracking_uri, mlflow_client, renamed_model):
    doc = manifest("scorer", renamed_model)
    file = write(tmp_path / "md.yaml", doc)
    state = tmp_path / "state"
    up = LocalUp(file, state, tracking_uri)
    client = None
    try:
        status = up.wait("v1 serving", lambda s: (s.get("stable") or {}).get("version") == "1" and s.get("url"))
        client = Client(status["url"], "scorer")
        time.sleep(1.0)
        _move(mlflow_client, renamed_model, "2")
        status = up.wait("v2 refused", lambda s: (s["canary"].get("rolledBack") or {}).get("version") == "2")
        time.sleep(1.0)
        records = client.stop()
        client = None
        up.proc.terminate()
        up.proc.wait(60)

        # Refused before any weight moved: no client request reached v2, none failed.
        assert records and all(r[2] == 200 and r[3] == "1" for r in records), \
            [r for r in records if r[2] != 200 or r[3] != "1"][:5]
        expected = "InterfaceChanged: input 'input' renamed or removed; new input 'features'"
        rb = status["canary"]["rolledBack"]
        assert rb["reason"] == "InterfaceChanged" and rb["check"] == "interface"
        assert status["phase"] == "RolledBack" and status["stable"]["version"] == "1"
        cond = next(c for c in status["conditions"] if c["type"] == "RolledBack")
        assert cond["reason"] == "InterfaceChanged" and expected in cond["message"]
        ev = up.events()
        assert not any(e["kind"] == "Started" for e in ev)
        assert not any(e["kind"] == "Routes" and any(r["version"] == "2" for r in e["routes"]) for e in ev)
        failed = [e for e in ev if e["kind"] in ("Failed", "RolledBack") and e.get("version") == "2"]
        assert [e["kind"] for e in failed] == ["Failed", "RolledBack"]
        assert all(e["reason"] == "InterfaceChanged" and e["message"] == expected and e["weight"] == 0
                   for e in failed)
        tag = mlflow_client.get_model_version(renamed_model, "2").tags["modelops.deployment.local.scorer"]
        assert tag.startswith("rolled back ") and f"({expected})" in tag  # local up stopped: written

        # 2. The clients were "changed first": allowInterfaceChange lets v2 through (a new
        # generation), but they still send `input`, and clientErrorsVsStable rolls it back.
        doc["spec"]["rollout"]["allowInterfaceChange"] = True
        write(file, doc)
        up = LocalUp(file, state, tracking_uri)
        status = up.wait("v1 serving again", lambda s: (s.get("stable") or {}).get("version") == "1"
                         and s.get("url") and s.get("observedGeneration", 0) >= 2)
        client = Client(status["url"], "scorer")
        status = up.wait("v2 rolled back by its analysis",
                         lambda s: (s["canary"].get("rolledBack") or {}).get("reason") == "AnalysisFailed",
                         timeout=90)
        records = client.stop()
        client = None
        rb = status["canary"]["rolledBack"]
        assert rb["version"] == "2" and rb["check"] == "clientErrorsVsStable", status["canary"]
        ev = up.events()
        started = next(e for e in ev if e["kind"] == "Started" and e["version"] == "2")
        assert "allowed by spec.rollout.allowInterfaceChange" in started["message"]
        rolled = next(e for e in ev if e["kind"] == "RolledBack" and e["version"] == "2"
                      and e["reason"] == "AnalysisFailed")
        elapsed = (_at(rolled) - _at(started)).total_seconds()
        assert elapsed <= FAILURE_LIMIT * INTERVAL + SLACK, elapsed
        analyses = [e for e in ev if e["kind"] == "Analysis" and e["version"] == "2"]
        assert [a["outcome"] for a in analyses] == ["Failed"] * FAILURE_LIMIT, analyses
        assert all(a["check"] == "clientErrorsVsStable" for a in analyses)
        # v2's own answers were refusals of the old input name; v1 answered everything else.
        assert {r[2] for r in records if r[3] == "2"} == {400}
        assert all(r[2] == 200 for r in records if r[3] != "2")
        def last_history() -> dict:  # written by local mode's history worker, after the status
            return json.loads(mlflow_client.get_model_version(renamed_model, "2").tags[
                "modelops.deployment.local.scorer.history"])[-1]

        deadline = time.monotonic() + 20
        while last_history().get("reason") != "AnalysisFailed" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert last_history()["check"] == "clientErrorsVsStable"
    finally:
        if client is not None:
            client.stop()
        up.kill()
