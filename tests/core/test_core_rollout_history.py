"""The rollout's history in MLflow: version tags per deployment and the promoted alias, written
through `modelops.registry.Registry` to the session's real MLflow server and read back with
MLflow's own client after each ending of a rollout driven by the real engine."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from modelops.deployment.spec import AnalysisSpec
from modelops.errors import VersionNotFound
from modelops.rollout import Observations, Phase, RolloutPolicy, RolloutState, analyse, drive
from modelops.rollout.analysis import ClientErrorRate, LatencyQuantile, RequestCount, SuccessRate, Target
from modelops.rollout.history import deployment_key, record_actions

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
KEY = deployment_key("ml-serving", "fraud")


class Metrics:
    def __init__(self, success: float):
        self.success = success

    def query(self, q):
        return {RequestCount: 200.0, SuccessRate: self.success, ClientErrorRate: 0.0, LatencyQuantile: 0.005}[type(q)]


def run(registry, model: str, status: dict, target: str, success: float, until: int, alias: str | None):
    """Drive a rollout tick by tick, recording every tick's actions in MLflow like the operator."""
    pol = RolloutPolicy(steps=(10, 50, 100), interval_seconds=60)
    metrics = Metrics(success)
    for i in range(until + 1):
        now = T0 + timedelta(minutes=i)
        state, actions = drive(RolloutState.from_status(status), Observations(target=target), pol, now,
                               analyse=lambda a: analyse(AnalysisSpec(), metrics,
                                                         Target(model, a.version, a.stable_version,
                                                                a.window_seconds, a.weight), now))
        status = state.to_status()
        record_actions(registry, model, "ml-serving", "fraud", actions, now, promote_alias=alias)
    return status


@pytest.fixture(scope="module")
def versions(mlflow_client, tmp_path_factory):
    """A registered model with three versions (a run's artifact directory each; history needs no model)."""
    name = f"history-{uuid.uuid4().hex[:6]}"
    mlflow_client.create_registered_model(name)
    exp = mlflow_client.create_experiment(name)
    for i in range(3):
        run = mlflow_client.create_run(exp)
        src = tmp_path_factory.mktemp(f"v{i}")
        (src / "MLmodel").write_text("flavors: {}\n")
        mlflow_client.log_artifacts(run.info.run_id, str(src), "model")
        mlflow_client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return name


def test_history_tags_and_promote_alias_after_each_ending(registry, mlflow_client, versions):
    name = versions
    status = run(registry, name, {}, "1", 1.0, 0, "production")  # first deployment
    assert mlflow_client.get_model_version_by_alias(name, "production").version == "1"
    tags1 = mlflow_client.get_model_version(name, "1").tags
    assert tags1[KEY] == "serving since 2025-03-01T09:00:00Z"

    # v2: healthy -> promoted after 3 intervals; the alias moves; v1 says it was replaced.
    status = run(registry, name, status, "2", 1.0, 4, "production")
    assert RolloutState.from_status(status).phase == Phase.PROMOTED
    assert mlflow_client.get_model_version_by_alias(name, "production").version == "2"
    tags2 = mlflow_client.get_model_version(name, "2").tags
    assert tags2[KEY] == "promoted 2025-03-01T09:03:00Z"
    history = json.loads(tags2[f"{KEY}.history"])
    assert [h["state"] for h in history] == ["canary 10%", "canary 50%", "canary 100%", "promoted"]
    assert [h["at"] for h in history] == ["2025-03-01T09:00:00Z", "2025-03-01T09:01:00Z",
                                          "2025-03-01T09:02:00Z", "2025-03-01T09:03:00Z"]
    assert mlflow_client.get_model_version(name, "1").tags[KEY] == "replaced by v2 2025-03-01T09:03:00Z"

    # v3: failing -> rolled back; the tag names the deciding check; the alias stays on v2.
    status = run(registry, name, status, "3", 0.5, 3, "production")
    assert RolloutState.from_status(status).phase == Phase.ROLLED_BACK
    tags3 = mlflow_client.get_model_version(name, "3").tags
    assert tags3[KEY].startswith("rolled back 2025-03-01T09:02:00Z (")
    assert "successRate" in tags3[KEY] and "0.5 < min 0.99" in tags3[KEY]
    last = json.loads(tags3[f"{KEY}.history"])[-1]
    assert (last["state"], last["reason"], last["check"]) == ("rolled back", "AnalysisFailed", "successRate")
    assert mlflow_client.get_model_version_by_alias(name, "production").version == "2"
    assert mlflow_client.get_model_version(name, "2").tags[KEY] == "promoted 2025-03-01T09:03:00Z"


def test_history_names_a_missing_version(registry, versions):
    with pytest.raises(VersionNotFound):
        registry.get_version_tags(versions, "99")
