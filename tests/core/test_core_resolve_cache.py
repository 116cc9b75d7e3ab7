"""The shared MLflow look-ups of the operator's passes (`modelops.resolve_cache`), against a real
MLflow server: one look-up serves a burst; an alias move, a new alias and `forget` are followed."""

from __future__ import annotations

import threading

import pytest

from modelops import errors
from modelops.resolve_cache import ResolveCache

ALIAS = "cache-test"


class Clock:
    """Time that moves only when the test says so (the cache's notion of "how old")."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alias(mlp_model, mlflow_client):
    mlflow_client.set_registered_model_alias(mlp_model.name, ALIAS, "1")
    yield ALIAS
    mlflow_client.delete_registered_model_alias(mlp_model.name, ALIAS)


def test_a_burst_of_passes_asks_mlflow_once(registry, mlp_model, alias):
    cache = ResolveCache(max_age=5.0)
    start = threading.Barrier(24)
    answers = []

    def one_pass():
        start.wait()
        answers.append(cache.resolve(registry, mlp_model.name, alias=alias))

    threads = [threading.Thread(target=one_pass) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 24 and {a.version for a in answers} == {"1"}
    assert cache.lookups == 1  # the concurrent callers waited for the one look-up in flight
    pinned = [cache.resolve(registry, mlp_model.name, version="2") for _ in range(5)]
    assert {p.version for p in pinned} == {"2"} and cache.lookups == 2  # its own key


def test_an_alias_move_is_followed_once_the_answer_is_max_age_old(registry, mlp_model, mlflow_client, alias):
    clock = Clock()
    cache = ResolveCache(max_age=1.0, clock=clock)
    assert cache.resolve(registry, mlp_model.name, alias=alias).version == "1"
    mlflow_client.set_registered_model_alias(mlp_model.name, alias, "2")
    clock.now += 0.5  # an answer half a second old may still be given
    assert cache.resolve(registry, mlp_model.name, alias=alias).version == "1"
    clock.now += 0.6  # older than max_age: MLflow is asked again, and the move is seen
    assert cache.resolve(registry, mlp_model.name, alias=alias).version == "2"
    assert cache.lookups == 2
    # a caller that needs today's answer gets it whatever the cache holds
    mlflow_client.set_registered_model_alias(mlp_model.name, alias, "1")
    assert cache.resolve(registry, mlp_model.name, alias=alias, max_age=0).version == "1"


def test_what_is_missing_is_never_kept(registry, mlp_model, mlflow_client):
    clock = Clock()
    cache = ResolveCache(max_age=60.0, clock=clock)
    with pytest.raises(errors.AliasNotFound):
        cache.resolve(registry, mlp_model.name, alias="cache-test-new")
    mlflow_client.set_registered_model_alias(mlp_model.name, "cache-test-new", "2")
    try:  # the alias appears: found at once, not after max_age
        assert cache.resolve(registry, mlp_model.name, alias="cache-test-new").version == "2"
    finally:
        mlflow_client.delete_registered_model_alias(mlp_model.name, "cache-test-new")
    with pytest.raises(errors.VersionNotFound):
        cache.resolve(registry, mlp_model.name, version="999")
    assert len(cache) == 1


def test_forget_drops_what_this_process_changed(registry, mlp_model, mlflow_client, alias):
    clock = Clock()
    cache = ResolveCache(max_age=60.0, clock=clock)
    assert cache.resolve(registry, mlp_model.name, alias=alias).version == "1"
    assert "cache-test.mark" not in cache.resolve(registry, mlp_model.name, version="1").tags
    mlflow_client.set_model_version_tag(mlp_model.name, "1", "cache-test.mark", "x")
    mlflow_client.set_registered_model_alias(mlp_model.name, alias, "2")
    try:
        cache.forget(registry.tracking_uri, mlp_model.name)
        assert cache.resolve(registry, mlp_model.name, alias=alias).version == "2"
        assert cache.resolve(registry, mlp_model.name, version="1").tags["cache-test.mark"] == "x"
    finally:
        mlflow_client.delete_model_version_tag(mlp_model.name, "1", "cache-test.mark")


def test_operator_follows_a_move_within_the_resolve_interval():
    from modelops_operator.config import OperatorConfig

    for interval, cache in [(60, 1.0), (1, 1.0), (5, 0), (0.2, 1.0)]:
        c = OperatorConfig(resolve_interval=interval, resolve_cache=cache)
        assert 0 <= c.resolve_max_age <= interval / 10 and c.resolve_max_age <= cache
        assert c.resolve_timer + c.resolve_max_age == pytest.approx(interval)
    assert OperatorConfig(resolve_interval=60).resolve_max_age == 1.0
