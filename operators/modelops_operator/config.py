"""Operator settings, from CLI flags and environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from modelops import retry

DEFAULT_RUNTIME = "modelops-onnxruntime"
DEFAULT_CONVERTER_IMAGE = "ghcr.io/modelops/modelops-converter:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    tracking_uri: str | None = None  # default MLflow server; a ModelDeployment may override it
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    conversion: str = "job"  # job | inprocess
    resolve_interval: float = 60.0  # an alias move is followed within this many seconds
    # Passes share MLflow's answers up to this old (a burst of one model asks MLflow once a second,
    # not once per object); at most a tenth of resolve_interval (`resolve_max_age`).
    resolve_cache: float = 1.0
    pass_workers: int = 16  # reconcile passes in flight at once (threads; they mostly wait on I/O)
    # Kopf's batching: how long an object's worker waits for more events before a pass (Kopf's
    # default 0.1 s), and how many objects' workers run at once (None: Kopf's default, unlimited).
    batch_window: float = 0.1
    worker_limit: int | None = None
    storage_rewrites: tuple[tuple[str, str], ...] = ()  # (artifact URI prefix, KServe URI prefix)
    runtime: str = DEFAULT_RUNTIME
    converter_image: str = DEFAULT_CONVERTER_IMAGE
    converter_service_account: str | None = None  # None: the namespace's default, token not mounted
    job_timeout: int = 3600  # activeDeadlineSeconds of conversion Jobs
    converter_resources: dict | None = None  # None: the builder's default (1 CPU, 2Gi; 8Gi limit)
    backoff_base: float = retry.OPERATOR.first  # first retry delay after a retryable error; doubles per retry
    backoff_max: float = retry.OPERATOR.cap
    api_url: str | None = None  # Kubernetes API server; None: in-cluster or KUBECONFIG
    work_dir: str | None = None  # scratch for in-process conversion
    prometheus_url: str | None = None  # canary analysis; a ModelDeployment may override it
    rollout_tick: float = 5.0  # seconds between passes of an active canary (analysis is due per interval)
    extra_env: dict = field(default_factory=dict)
    # Predictor access (modelops_operator.access; the chart's predictorAccess and predictor values).
    predictor_access: bool = False  # may create ServiceAccounts, NetworkPolicies, patch the binding
    predictor_auth: str = "none"  # spec.predictor.auth when a ModelDeployment does not say
    predictor_audiences: tuple[str, ...] = ("modelops.dev/predict",)
    predictor_auth_binding: str = "modelops-predictor-auth"  # the chart's ClusterRoleBinding
    predictor_scraper_peer: dict | None = None  # NetworkPolicyPeer admitted to scrape /metrics

    @property
    def resolve_max_age(self) -> float:
        """How old an MLflow answer a pass may use (`modelops.resolve_cache`)."""
        return max(0.0, min(self.resolve_cache, self.resolve_interval / 10))

    @property
    def resolve_timer(self) -> float:
        """Seconds between an alias-following object's re-resolves: with answers up to
        `resolve_max_age` old, a move is still seen within `resolve_interval`."""
        return self.resolve_interval - self.resolve_max_age

    def backoff(self, retry_count: int) -> float:
        """Delay before Kopf's retry `retry_count` (0 for the first): the `retry.OPERATOR` shape
        with this configuration's first delay and cap."""
        return retry.Backoff(self.backoff_base, self.backoff_max).delay(retry_count + 1)

    @staticmethod
    def env_tracking_uri() -> str | None:
        return os.environ.get("MODELOPS_MLFLOW_TRACKING_URI") or None
