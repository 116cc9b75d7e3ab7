"""Leader election over a coordination.k8s.io Lease: with several replicas, exactly one operator acts.

Why a Lease rather than Kopf's peering: Kopf peering lets operators of *equal* priority run side by
side (it only warns), so replicas of one Deployment would all act; a Lease gives a single holder.
The election is the `kubernetes` client's own (`kubernetes.leaderelection.LeaderElection` with
`LeaseLock`), run in a thread; this module adapts it to asyncio and adds what running Kopf under
it needs:

- **Wait, then act**: `run_elected(work, settings)` awaits the Lease and only then runs
  `work(stop_flag)` (the Kopf operator). Standbys never start Kopf, so they write nothing.
- **Stop before anyone else can start**: if the leader cannot renew for `renew_deadline` seconds
  (API unreachable, or another holder), the process exits at once (`os._exit`, like client-go
  controllers), before `lease_duration` can pass for a standby. Every Lease call has a
  `retry_period` timeout, and a watchdog checks the time since the last renewal, so a hung call
  cannot keep a stale leader alive.
- **Hand over on a clean stop**: when `work` returns (SIGTERM, rolling update) the Lease is
  released (holder cleared), and a standby takes over at its next try, within `retry_period`.

Failover after a crash of the leader (defaults 15/10/2 s): a standby takes the Lease between
`lease_duration` and `lease_duration + 2 * retry_period` seconds after the leader's last renewal,
i.e. at most 19 s after the crash (plus Kopf's start-up). After a clean stop: within 2 s.

Identity: `<MODELOPS_LEADER_ELECT_IDENTITY or hostname>_<random>`, unique per process, so a
restarted container never mistakes the old process's Lease for its own.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import metrics

log = logging.getLogger("modelops.operator.leader")

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None or value == "" else value.strip().lower() in ("1", "true", "yes", "on")


def _default_identity() -> str:
    base = os.environ.get("MODELOPS_LEADER_ELECT_IDENTITY") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaderElectionSettings:
    enabled: bool = False
    lease_name: str = "modelops-operator"
    namespace: str | None = None  # None: the pod's namespace in cluster, else the kubeconfig's
    identity: str = field(default_factory=_default_identity)
    lease_duration: int = 15  # seconds a standby waits after the last renewal it saw
    renew_deadline: int = 10  # seconds the leader keeps trying to renew before it gives up (exits)
    retry_period: int = 2  # seconds between tries (and the timeout of each Lease call)

    def validate(self) -> None:
        """The `kubernetes` client's own rules (it would sys.exit on them), as a ValueError."""
        if not (isinstance(self.lease_duration, int) and isinstance(self.renew_deadline, int)
                and isinstance(self.retry_period, int)):
            raise ValueError("leader election durations are whole seconds")
        if self.retry_period < 1:
            raise ValueError("leader election retry period must be at least 1 s")
        if self.renew_deadline <= 1.2 * self.retry_period:
            raise ValueError("leader election renew deadline must exceed 1.2 x the retry period")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("leader election lease duration must exceed the renew deadline")

    @property
    def max_failover_seconds(self) -> int:
        """Worst case from a leader's crash to a standby holding the Lease."""
        return self.lease_duration + 2 * self.retry_period


def add_arguments(ap: argparse.ArgumentParser) -> None:
    env = os.environ
    g = ap.add_argument_group("leader election (run several replicas; one acts)")
    g.add_argument("--leader-elect", action=argparse.BooleanOptionalAction,
                   default=_env_bool("MODELOPS_LEADER_ELECT"),
                   help="hold a coordination.k8s.io Lease before acting (env MODELOPS_LEADER_ELECT)")
    g.add_argument("--leader-elect-lease", default=env.get("MODELOPS_LEADER_ELECT_LEASE", "modelops-operator"),
                   help="Lease name (env MODELOPS_LEADER_ELECT_LEASE)")
    g.add_argument("--leader-elect-namespace", default=env.get("MODELOPS_LEADER_ELECT_NAMESPACE") or None,
                   help="Lease namespace; default: the pod's, else the kubeconfig's "
                        "(env MODELOPS_LEADER_ELECT_NAMESPACE)")
    for flag, var, default, what in (
            ("--leader-elect-lease-duration", "MODELOPS_LEADER_ELECT_LEASE_DURATION", 15,
             "seconds a standby waits after the leader's last renewal"),
            ("--leader-elect-renew-deadline", "MODELOPS_LEADER_ELECT_RENEW_DEADLINE", 10,
             "seconds the leader tries to renew before it stops"),
            ("--leader-elect-retry-period", "MODELOPS_LEADER_ELECT_RETRY_PERIOD", 2,
             "seconds between tries")):
        g.add_argument(flag, type=int, default=int(env.get(var) or default), help=f"{what} (env {var})")


def settings_from_args(args: argparse.Namespace) -> LeaderElectionSettings:
    settings = LeaderElectionSettings(
        enabled=args.leader_elect, lease_name=args.leader_elect_lease,
        namespace=args.leader_elect_namespace, lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline, retry_period=args.leader_elect_retry_period)
    settings.validate()
    return settings


# --- the Kubernetes side ---------------------------------------------------------------------------
def default_api_client(kubeconfig: str | None = None):
    """An ApiClient for the pod's service account in cluster, else KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def default_namespace(kubeconfig: str | None = None) -> str:
    try:
        with open(SA_NAMESPACE_FILE) as f:
            return f.read().strip()
    except OSError:
        pass
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts(config_file=kubeconfig)
        return current.get("context", {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kubeconfig: the API's default namespace
        return "default"


class _TimedApi:
    """CoordinationV1Api whose every call carries `_request_timeout`."""

    def __init__(self, api, timeout: float):
        self._api = api
        self._timeout = timeout

    def __getattr__(self, name):
        return functools.partial(getattr(self._api, name), _request_timeout=self._timeout)


def _election_class():
    from kubernetes.leaderelection.leaderelection import LeaderElection

    class Election(LeaderElection):
        """Stops trying once `stopping` is set; tries and the release never interleave."""

        def __init__(self, config, guard: threading.Lock, stopping: threading.Event):
            super().__init__(config)
            self._guard = guard
            self._stopping = stopping
            self.last_renewal = 0.0  # time.monotonic() of the last successful acquire/renew

        def try_acquire_or_renew(self):
            with self._guard:
                if self._stopping.is_set():
                    return False
                ok = super().try_acquire_or_renew()
                if ok:
                    self.last_renewal = time.monotonic()
                return ok

    return Election


def _exit_now() -> None:
    log.critical("lost the leader Lease: exiting at once so that no other operator acts alongside")
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(1)


class Elector:
    """One candidate. `await wait_leading()`, act, then `await release()`; `lost` fires on loss."""

    def __init__(self, settings: LeaderElectionSettings, api_client, namespace: str):
        from kubernetes import client
        from kubernetes.leaderelection import electionconfig
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        settings.validate()
        self.settings = settings
        self.namespace = namespace
        self._api = _TimedApi(client.CoordinationV1Api(api_client), settings.retry_period)
        lock = LeaseLock(settings.lease_name, namespace, settings.identity)
        lock.api_instance = self._api
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._loop = asyncio.get_running_loop()
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        config = electionconfig.Config(
            lock, lease_duration=settings.lease_duration, renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
            onstarted_leading=lambda: self._loop.call_soon_threadsafe(self.leading.set),
            onstopped_leading=self._stopped)
        self.election = _election_class()(config, self._guard, self._stopping)
        self.thread = threading.Thread(target=self.election.run, name="leader-election", daemon=True)

    def _stopped(self) -> None:
        if not self._stopping.is_set():
            self._loop.call_soon_threadsafe(self.lost.set)

    def start(self) -> None:
        log.info("leader election: %s waits for Lease %s/%s", self.settings.identity, self.namespace,
                 self.settings.lease_name)
        self.thread.start()

    def renewed_within(self, seconds: float) -> bool:
        return time.monotonic() - self.election.last_renewal <= seconds

    def _release(self) -> bool:
        """Clear the holder (if still us) so a standby takes over at its next try."""
        from kubernetes.client.rest import ApiException

        with self._guard:
            self._stopping.set()
            for _ in range(3):
                try:
                    lease = self._api.read_namespaced_lease(self.settings.lease_name, self.namespace)
                    if lease.spec is None or lease.spec.holder_identity != self.settings.identity:
                        return False
                    now = datetime.datetime.now(datetime.timezone.utc)
                    lease.spec.holder_identity = ""
                    lease.spec.lease_duration_seconds = 1
                    lease.spec.renew_time = now
                    self._api.replace_namespaced_lease(self.settings.lease_name, self.namespace, lease)
                    return True
                except ApiException as exc:
                    if exc.status != 409:
                        log.warning("could not release the leader Lease: %s", exc.reason)
                        return False
                except Exception as exc:  # noqa: BLE001 - the API is unreachable: it expires
                    log.warning("could not release the leader Lease: %s", exc)
                    return False
        return False

    async def release(self) -> bool:
        released = await asyncio.to_thread(self._release)
        if released:
            log.info("leader election: released Lease %s/%s", self.namespace, self.settings.lease_name)
        return released


async def run_elected(work: Callable[[asyncio.Event], Awaitable[None]], settings: LeaderElectionSettings, *,
                      api_client=None, kubeconfig: str | None = None,
                      on_lost: Callable[[], None] = _exit_now,
                      stop_flag: asyncio.Event | None = None) -> None:
    """Run `work(stop_flag)` only while this process holds the Lease (or at once if disabled).

    `work` must return once its `stop_flag` is set. If the Lease is lost, `on_lost()` runs (by
    default the process exits at once). `stop_flag` stops a standby waiting for the Lease too.
    """
    stop = stop_flag or asyncio.Event()
    if not settings.enabled:
        metrics.LEADER.set(1)
        try:
            await work(stop)
        finally:
            metrics.LEADER.set(0)
        return
    namespace = settings.namespace or default_namespace(kubeconfig)
    elector = Elector(settings, api_client or default_api_client(kubeconfig), namespace)
    elector.start()
    waiting = asyncio.ensure_future(elector.leading.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not elector.leading.is_set():
        stopping.cancel()
        elector._stopping.set()
        return
    stopping.cancel()
    log.info("leader election: %s leads (Lease %s/%s)", settings.identity, namespace, settings.lease_name)
    metrics.LEADER.set(1)

    async def watchdog() -> None:
        # The election thread reports a failed renewal loop; a hung call is caught by the clock.
        while True:
            if elector.lost.is_set() or not elector.renewed_within(settings.renew_deadline):
                metrics.LEADER.set(0)
                on_lost()
                return
            await asyncio.sleep(0.25)  # a plain sleep: no helper tasks for Kopf to wait for at exit

    guard = asyncio.create_task(watchdog())
    task = asyncio.create_task(work(stop))
    try:
        await asyncio.wait({guard, task}, return_when=asyncio.FIRST_COMPLETED)
        if guard.done() and not task.done():  # on_lost returned (tests): stop the work now
            stop.set()
            task.cancel()
        if task.done() and not task.cancelled():
            task.result()
    finally:
        guard.cancel()
        metrics.LEADER.set(0)
        if not elector.lost.is_set():
            await elector.release()
