"""The operator's Kubernetes adapter against the real API server: a concurrent write answers
409 Conflict and is re-read and retried, never lost; credentials come from the kubeconfig."""

from __future__ import annotations

import pytest

from modelops_operator.kube import INFERENCESERVICES, ApiError, Kube, load_configuration

pytestmark = pytest.mark.timeout(120)


def isvc(ns: str, name: str, uri: str) -> dict:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}}}


class RacingKube(Kube):
    """Another writer changes the object right after each of the first `races` reads."""

    def __init__(self, configuration, cluster, races: int):
        super().__init__(configuration)
        self.cluster, self.races, self.reads = cluster, races, 0

    def get(self, path):
        observed = super().get(path)
        self.reads += 1
        if observed is not None and self.reads <= self.races:
            meta = observed["metadata"]
            self.cluster.patch("inferenceservice", meta["namespace"], meta["name"],
                               {"metadata": {"labels": {"other-writer": str(self.reads)}}})
        return observed


def test_concurrent_write_conflicts_and_is_retried(cluster, namespace, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    cfg = load_configuration()
    assert cfg.cert_file and cfg.key_file  # the admin kubeconfig's client certificate
    ns, name = namespace, "race"
    cluster.apply(isvc(ns, name, "s3://b/v1"), "-n", ns)
    kube = RacingKube(cfg, cluster, races=2)
    path, create = INFERENCESERVICES.path(ns, name), INFERENCESERVICES.path(ns)

    def diff(observed):
        uri = observed["spec"]["predictor"]["model"]["storageUri"]
        return None if uri == "s3://b/v2" else {"spec": {"predictor": {"model": {"storageUri": "s3://b/v2"}}}}

    obj, wrote = kube.apply_merge(path, create, isvc(ns, name, "s3://b/v2"), diff)
    assert wrote and kube.reads == 3  # two 409s, re-read each time, the third write went through
    now = cluster.get("inferenceservice", ns, name)
    assert now["spec"]["predictor"]["model"]["storageUri"] == "s3://b/v2"
    assert now["metadata"]["labels"]["other-writer"] == "2"  # the other writer's change is kept

    # a stale resourceVersion is refused by the server, not silently applied
    stale = now["metadata"]["resourceVersion"]
    cluster.patch("inferenceservice", ns, name, {"metadata": {"labels": {"other-writer": "3"}}})
    with pytest.raises(ApiError) as info:
        Kube(cfg).merge_patch(path, {"metadata": {"labels": {"mine": "x"}}}, resource_version=stale)
    assert info.value.status == 409 and info.value.retryable

    # never-ending conflicts give up with a 409 (the reconcile pass retries later with backoff)
    with pytest.raises(ApiError) as info:
        RacingKube(cfg, cluster, races=10).apply_merge(
            path, create, {}, lambda o: {"metadata": {"labels": {"mine": o["metadata"]["resourceVersion"]}}},
            attempts=3)
    assert info.value.status == 409


def test_create_first_writes_without_a_read_and_falls_back_when_it_exists(cluster, namespace, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    kube = RacingKube(load_configuration(), cluster, races=0)
    ns = namespace
    create = INFERENCESERVICES.path(ns)

    def diff(observed):
        uri = observed["spec"]["predictor"]["model"]["storageUri"]
        return None if uri == "s3://b/v2" else {"spec": {"predictor": {"model": {"storageUri": "s3://b/v2"}}}}

    # absent: one POST, no GET
    obj, wrote = kube.apply_merge(INFERENCESERVICES.path(ns, "fresh"), create, isvc(ns, "fresh", "s3://b/v2"),
                                  diff, create_first=True)
    assert wrote and kube.reads == 0 and obj["metadata"]["resourceVersion"]
    assert cluster.get("inferenceservice", ns, "fresh")["spec"]["predictor"]["model"]["storageUri"] == "s3://b/v2"
    # present after all (409 AlreadyExists): read and merge-patched as without the hint
    cluster.apply(isvc(ns, "there", "s3://b/v1"), "-n", ns)
    obj, wrote = kube.apply_merge(INFERENCESERVICES.path(ns, "there"), create, isvc(ns, "there", "s3://b/v2"),
                                  diff, create_first=True)
    assert wrote and kube.reads == 1
    assert cluster.get("inferenceservice", ns, "there")["spec"]["predictor"]["model"]["storageUri"] == "s3://b/v2"
