"""modelops_operator.leader (Lease election, against the real API server) and modelops_operator.metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest

from modelops.deployment.facts import Failure
from modelops_operator import leader, metrics

FAST = dict(lease_duration=4, renew_deadline=3, retry_period=1)


# --- metrics -----------------------------------------------------------------------------------------
def sample(name: str, labels: dict | None = None) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels or {})


def test_record_pass_counts_outcomes_and_tracks_stalled_deployments():
    ns, name = "ml", f"m-{uuid.uuid4().hex[:6]}"
    before = {k: sample("modelops_operator_reconcile_errors_total", {"reason": k}) or 0
              for k in ("ParityFailed", "RegistryUnavailable", "KubernetesApiError")}
    writes = sample("modelops_operator_writes_total", {"resource": "status"}) or 0
    stalled = SimpleNamespace(body={}, stalled=Failure("ParityFailed", "too far", False), retry=None, wrote=("status",))
    metrics.record_pass(ns, name, stalled, 0.2)
    assert sample("modelops_operator_deployment_stalled", {"namespace": ns, "name": name, "reason": "ParityFailed"}) == 1
    assert sample("modelops_operator_reconcile_errors_total", {"reason": "ParityFailed"}) == before["ParityFailed"] + 1
    assert sample("modelops_operator_writes_total", {"resource": "status"}) == writes + 1
    retry = SimpleNamespace(body={}, stalled=None, retry=Failure("RegistryUnavailable", "down", True), wrote=())
    metrics.record_pass(ns, name, retry)
    # A retry does not clear a stall (the failed version is still not served) ...
    assert sample("modelops_operator_deployment_stalled", {"namespace": ns, "name": name, "reason": "ParityFailed"}) == 1
    assert sample("modelops_operator_reconcile_errors_total", {"reason": "RegistryUnavailable"}) == \
        before["RegistryUnavailable"] + 1
    # ... a good pass does, and so does the object going away.
    metrics.record_pass(ns, name, SimpleNamespace(body={}, stalled=None, retry=None, wrote=()))
    assert sample("modelops_operator_deployment_stalled", {"namespace": ns, "name": name, "reason": "ParityFailed"}) is None
    metrics.record_pass(ns, name, stalled)
    metrics.record_pass(ns, name, SimpleNamespace(body=None, stalled=None, retry=None, wrote=()))
    assert sample("modelops_operator_deployment_stalled", {"namespace": ns, "name": name, "reason": "ParityFailed"}) is None
    # A canary that rolled back is a failed rollout too (the stable version keeps serving).
    metrics.record_pass(ns, name, SimpleNamespace(body={}, stalled=None, retry=None, wrote=(), phase="RolledBack"))
    assert sample("modelops_operator_deployment_stalled", {"namespace": ns, "name": name, "reason": "RolledBack"}) == 1
    metrics.record_pass(ns, name, SimpleNamespace(body={}, stalled=None, retry=None, wrote=(), phase="Ready"))
    assert sample("modelops_operator_deployment_stalled", {"namespace": ns, "name": name, "reason": "RolledBack"}) is None
    metrics.record_api_error(RuntimeError("409"))
    assert sample("modelops_operator_reconcile_errors_total", {"reason": "KubernetesApiError"}) == \
        before["KubernetesApiError"] + 1


@pytest.mark.asyncio
async def test_endpoints_serve_metrics_and_probes():
    healthy = {"ok": True}
    endpoints = metrics.Endpoints("127.0.0.1:0", healthy=lambda: healthy["ok"])
    port = await endpoints.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert "modelops_operator_leader " in r.text and "process_resident_memory_bytes" in r.text
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            healthy["ok"] = False
            assert (await client.get("/healthz")).status_code == 503
    finally:
        await endpoints.stop()
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.Endpoints("8080")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="exceed the renew deadline"):
        leader.LeaderElectionSettings(lease_duration=10, renew_deadline=10).validate()
    with pytest.raises(ValueError, match="1.2 x"):
        leader.LeaderElectionSettings(renew_deadline=2, retry_period=2).validate()
    assert leader.LeaderElectionSettings().max_failover_seconds == 19
    a, b = leader.LeaderElectionSettings(), leader.LeaderElectionSettings()
    assert a.identity != b.identity  # unique per process, even with the same pod name


# --- leader election on the real API server ----------------------------------------------------------
@pytest.fixture
def lease_namespace(cluster):
    return cluster.restricted_namespace(f"lease-{cluster.suffix}")


def settings_for(ns: str, lease: str, name: str) -> leader.LeaderElectionSettings:
    return leader.LeaderElectionSettings(enabled=True, lease_name=lease, namespace=ns,
                                         identity=f"{name}_{uuid.uuid4().hex[:4]}", **FAST)


def api_client(cluster):
    return leader.default_api_client(cluster.cp.kubeconfig)


class Worker:
    """`work` for run_elected: records when it ran, stops on its flag."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log
        self.stop: asyncio.Event | None = None

    async def __call__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.log.append((self.name, "start", time.monotonic()))
        await stop.wait()
        self.log.append((self.name, "end", time.monotonic()))


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_one_leader_and_a_clean_hand_over(cluster, lease_namespace):
    lease = f"l-{uuid.uuid4().hex[:6]}"
    log: list = []
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(leader.run_elected(Worker("a", log), settings_for(lease_namespace, lease, "a"),
                                               api_client=api_client(cluster), stop_flag=stop_a,
                                               on_lost=lambda: log.append(("a", "lost", time.monotonic()))))
    await wait_for(lambda: log, what="a to lead")
    b = asyncio.create_task(leader.run_elected(Worker("b", log), settings_for(lease_namespace, lease, "b"),
                                               api_client=api_client(cluster), stop_flag=stop_b,
                                               on_lost=lambda: log.append(("b", "lost", time.monotonic()))))
    await asyncio.sleep(FAST["lease_duration"] + 2)  # longer than a lease: b must still wait
    assert [e[:2] for e in log] == [("a", "start")]
    assert sample("modelops_operator_leader") == 1
    holder = cluster.get("lease", lease, "-n", lease_namespace)["spec"]["holderIdentity"]
    assert holder.startswith("a_")
    stopped = time.monotonic()
    stop_a.set()  # a clean stop: a's work ends, the Lease is released
    await a
    await wait_for(lambda: ("b", "start") in [e[:2] for e in log], what="b to lead")
    handed = [e for e in log if e[:2] == ("b", "start")][0][2] - stopped
    assert handed <= FAST["retry_period"] + 1.5, handed
    a_end = [e for e in log if e[:2] == ("a", "end")][0][2]
    assert a_end <= [e for e in log if e[:2] == ("b", "start")][0][2]  # never both
    stop_b.set()
    await b
    assert not any(e[1] == "lost" for e in log)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_leader_that_cannot_renew_stops_before_anyone_else_may_lead(cluster, lease_namespace):
    """Another holder appears in the Lease (as after a partition): the leader gives up within
    renew_deadline, before a standby could take over (lease_duration)."""
    lease = f"l-{uuid.uuid4().hex[:6]}"
    log: list = []
    stop = asyncio.Event()

    def lost():
        log.append(("a", "lost", time.monotonic()))
        stop.set()

    a = asyncio.create_task(leader.run_elected(Worker("a", log), settings_for(lease_namespace, lease, "a"),
                                               api_client=api_client(cluster), stop_flag=stop, on_lost=lost))
    await wait_for(lambda: log, what="a to lead")
    obj = cluster.get("lease", lease, "-n", lease_namespace)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    obj["spec"].update(holderIdentity="intruder", renewTime=now, leaseDurationSeconds=60)
    taken = time.monotonic()
    cluster.kubectl("replace", "-f", "-", input=json.dumps(obj))
    await wait_for(lambda: any(e[1] == "lost" for e in log), timeout=20, what="a to notice")
    await a
    noticed = [e for e in log if e[1] == "lost"][0][2] - taken
    assert noticed < FAST["lease_duration"], noticed  # stopped before a standby could start
    assert cluster.get("lease", lease, "-n", lease_namespace)["spec"]["holderIdentity"] == "intruder"


async def wait_for(check, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
