"""MLflow registry access: resolve model URIs, download artifacts, write results back.

Every MLflow failure is translated into `modelops.errors`: a missing model/version/alias names
what is missing; a server that does not answer is `RegistryUnavailable` (retryable).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import errors, retry

# MLflow's REST client retries for minutes by default (7 retries, backoff factor 2). We retry at
# our own boundary (operator backoff, CLI exit code), so keep MLflow's own retries short: the
# numbers are `retry.MLFLOW_HTTP` (an environment variable the user set wins).
for _name, _value in retry.MLFLOW_HTTP.items():
    os.environ.setdefault(_name, _value)

from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

TAG_PREFIX = "modelops."

_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w\-]+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9a-zA-Z]+)/(?P<path>.+?)/?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI: exactly one of (name+version), (name+alias), (run_id+path)."""

    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None

    @property
    def uri(self) -> str:
        if self.run_id:
            return f"runs:/{self.run_id}/{self.path}"
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """Parse `models:/<name>/<version>`, `models:/<name>@<alias>` or `runs:/<run_id>/<path>`."""
    for pattern in (_MODELS_VERSION, _MODELS_ALIAS, _RUNS):
        m = pattern.match(uri.strip())
        if m:
            return ModelRef(**m.groupdict())
    raise errors.InvalidModelURI(
        f"invalid model URI {uri!r}: expected models:/<name>/<version>, "
        "models:/<name>@<alias> or runs:/<run_id>/<path>",
        uri=uri,
    )


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to immutable coordinates."""

    uri: str  # what the user asked for
    run_id: str | None
    artifact_uri: str  # the pinned model URI (models:/NAME/VERSION or runs:/...); download() finds the files
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    source: str | None = None
    tags: dict = field(default_factory=dict, compare=False)

    @property
    def pinned_uri(self) -> str:
        if self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return self.uri

    @property
    def label(self) -> str:
        """Short human name: `name v3` or the run URI."""
        return f"{self.name} v{self.version}" if self.name else self.uri


class _Missing(Exception):
    """Internal: a version/alias look-up found nothing (which part is missing is asked next)."""


def _is_not_found(exc: MlflowException) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        "not found" in str(exc).lower() or "does not exist" in str(exc).lower()
    )


def _is_unreachable(exc: Exception) -> bool:
    text = str(exc)
    markers = ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out",
               "Read timed out", "Failed to establish", "API request to", "Name or service")
    return any(m in text for m in markers)


class Registry:
    """A thin, error-translating layer over `MlflowClient` for one tracking server."""

    def __init__(self, tracking_uri: str, *, probe_timeout: float = retry.MLFLOW_PROBE_TIMEOUT):
        if not tracking_uri:
            raise errors.InvalidSpec("registry.trackingUri", "no MLflow tracking URI given")
        self.tracking_uri = tracking_uri.rstrip("/")
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._probe_timeout = probe_timeout
        self._http: httpx.Client | None = None

    # --- reachability -----------------------------------------------------------------------
    def check_reachable(self) -> None:
        """Fail fast with `RegistryUnavailable` instead of waiting on MLflow's own retries."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        if self._http is None:  # keep-alive: a fresh connection per probe costs ~30 ms
            self._http = httpx.Client(timeout=self._probe_timeout)
        try:
            r = self._http.get(f"{self.tracking_uri}/health")
        except httpx.HTTPError as exc:
            raise errors.RegistryUnavailable(
                f"MLflow tracking server {self.tracking_uri} is unreachable: {exc}",
                tracking_uri=self.tracking_uri,
            ) from exc
        if r.status_code >= 500:
            raise errors.RegistryUnavailable(
                f"MLflow tracking server {self.tracking_uri} answered {r.status_code}",
                tracking_uri=self.tracking_uri,
            )

    def _call(self, what: str, fn, *args, not_found: Exception | None = None):
        """Call MLflow; not-found becomes `not_found`, a dead server `RegistryUnavailable`."""
        try:
            return fn(*args)
        except MlflowException as exc:
            if not_found is not None and _is_not_found(exc):
                raise not_found from exc
            if not _is_unreachable(exc):
                raise errors.RegistryError(f"MLflow {what} failed: {exc}") from exc
            cause = exc
        except (OSError, httpx.HTTPError) as exc:
            cause = exc
        except Exception as exc:  # requests' ConnectionError and friends
            if not _is_unreachable(exc):
                raise
            cause = exc
        raise errors.RegistryUnavailable(
            f"MLflow tracking server {self.tracking_uri} is unreachable ({what}): {cause}") from cause

    # --- resolution -------------------------------------------------------------------------
    def resolve(self, uri: str | ModelRef) -> ResolvedModel:
        ref = parse_model_uri(uri) if isinstance(uri, str) else uri
        if ref.run_id:
            return self._resolve_run(ref)
        return self.resolve_version(ref.name, version=ref.version, alias=ref.alias)

    def resolve_version(
        self, name: str, version: str | int | None = None, alias: str | None = None
    ) -> ResolvedModel:
        """Pin a registered model to a version, by number or by alias."""
        if (version is None) == (alias is None):
            raise errors.InvalidSpec("model", "give exactly one of version or alias")
        self.check_reachable()
        # One call on the happy path; which thing is missing is asked only when one is.
        try:
            if alias is not None:
                mv = self._call("get_model_version_by_alias", self.client.get_model_version_by_alias,
                                name, alias, not_found=_Missing())
            else:
                mv = self._call("get_model_version", self.client.get_model_version, name, str(version),
                                not_found=_Missing())
        except _Missing:
            self._call(
                "get_registered_model", self.client.get_registered_model, name,
                not_found=errors.ModelNotFound(f"registered model {name!r} not found in MLflow", name=name),
            )
            if alias is not None:
                raise errors.AliasNotFound(f"alias {alias!r} of registered model {name!r} not found in MLflow",
                                           name=name, alias=alias) from None
            raise errors.VersionNotFound(f"version {version} of registered model {name!r} not found in MLflow",
                                         name=name, version=str(version)) from None
        uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{mv.version}"
        return ResolvedModel(
            uri=uri, run_id=mv.run_id or None, artifact_uri=f"models:/{name}/{mv.version}", name=name,
            version=str(mv.version), alias=alias, source=mv.source, tags=dict(mv.tags or {}),
        )

    def _resolve_run(self, ref: ModelRef) -> ResolvedModel:
        self.check_reachable()
        run = self._call(
            "get_run", self.client.get_run, ref.run_id,
            not_found=errors.ModelNotFound(f"run {ref.run_id!r} not found in MLflow", run_id=ref.run_id),
        )
        artifact_uri = ref.uri  # MLflow resolves runs:/ URIs, including MLflow 3 logged models
        return ResolvedModel(uri=ref.uri, run_id=ref.run_id, artifact_uri=artifact_uri,
                             source=ref.uri, tags=dict(run.data.tags))

    # --- artifacts --------------------------------------------------------------------------
    def download(self, resolved: ResolvedModel, dst: str | Path | None = None) -> Path:
        """Download the MLflow model directory (the one holding `MLmodel`)."""
        import mlflow.artifacts

        dst = Path(dst or tempfile.mkdtemp(prefix="modelops-src-"))
        dst.mkdir(parents=True, exist_ok=True)
        source = resolved.artifact_uri
        if resolved.name and resolved.version:  # where the version's files are, asked only to download
            source = self._call("get_model_version_download_uri", self.client.get_model_version_download_uri,
                                resolved.name, resolved.version)
        # MLflow 3 resolves a runs:/ URI of a logged model with its *global* tracking URI: pin it to ours
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        with _use_tracking_uri(self.tracking_uri):
            local = self._call(
                "download_artifacts", mlflow.artifacts.download_artifacts,
                source, None, None, str(dst), self.tracking_uri,
                not_found=errors.ModelNotFound(f"artifacts of {resolved.label} not found at {source}"),
            )
        local = Path(local)
        if not (local / "MLmodel").exists():
            found = list(local.rglob("MLmodel"))
            if not found:
                raise errors.ModelNotFound(
                    f"{resolved.label}: no MLmodel file under {resolved.artifact_uri}; is it an MLflow model?")
            local = found[0].parent
        return local

    def download_dir(self, artifact_uri: str, dst: str | Path) -> Path:
        """Download an artifact directory's files directly into `dst`."""
        import shutil

        import mlflow.artifacts

        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="modelops-dl-") as tmp:
            local = Path(self._call("download_artifacts", mlflow.artifacts.download_artifacts,
                                    artifact_uri, None, None, tmp, self.tracking_uri))
            for f in local.iterdir():
                shutil.move(str(f), dst / f.name)
        return dst

    def load_json(self, artifact_uri: str) -> dict:
        """One small JSON artifact (e.g. a published `conversion.json`), without the directory."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="modelops-dl-") as tmp:
            local = self._call("download_artifacts", mlflow.artifacts.download_artifacts,
                               artifact_uri, None, None, tmp, self.tracking_uri)
            try:
                return json.loads(Path(local).read_text())
            except (OSError, ValueError) as exc:
                raise errors.RegistryError(f"{artifact_uri} is not a JSON document: {exc}") from exc

    # --- write back -------------------------------------------------------------------------
    def set_tags(self, resolved: ResolvedModel, tags: dict[str, object]) -> None:
        """Tag the model version (or the run, for runs:/ URIs) so the MLflow UI shows it."""
        for key, value in tags.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            if resolved.name and resolved.version:
                self._call("set_model_version_tag", self.client.set_model_version_tag,
                           resolved.name, resolved.version, key, text)
            elif resolved.run_id:
                self._call("set_tag", self.client.set_tag, resolved.run_id, key, text)

    def version_tags(self, resolved: ResolvedModel) -> dict[str, str]:
        if resolved.name and resolved.version:
            mv = self._call("get_model_version", self.client.get_model_version,
                            resolved.name, resolved.version)
            return dict(mv.tags or {})
        run = self._call("get_run", self.client.get_run, resolved.run_id)
        return dict(run.data.tags)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Tag a registered model version."""
        for key, value in tags.items():
            self._call("set_model_version_tag", self.client.set_model_version_tag, name, str(version), key, value)

    def get_version_tags(self, name: str, version: str) -> dict[str, str]:
        mv = self._call("get_model_version", self.client.get_model_version, name, str(version),
                        not_found=errors.VersionNotFound(
                            f"version {version} of registered model {name!r} not found in MLflow",
                            name=name, version=str(version)))
        return dict(mv.tags or {})

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` of registered model `name` at `version`."""
        self._call("set_registered_model_alias", self.client.set_registered_model_alias, name, alias,
                   str(version))

    def model_version_run_id(self, name: str, version: str) -> str | None:
        """The run a registered model version was logged from (None: registered without one)."""
        mv = self._call("get_model_version", self.client.get_model_version, name, str(version),
                        not_found=errors.VersionNotFound(
                            f"version {version} of registered model {name!r} not found in MLflow",
                            name=name, version=str(version)))
        return mv.run_id or None

    def log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str) -> str:
        """Log `files` (name -> content) into `artifact_path` of run `run_id`; returns that folder's
        artifact URI."""
        with tempfile.TemporaryDirectory(prefix="modelops-") as tmp:
            for file_name, data in files.items():
                (Path(tmp) / file_name).write_bytes(data)
            self._call("log_artifacts", self.client.log_artifacts, run_id, tmp, artifact_path)
        run = self._call("get_run", self.client.get_run, run_id)
        return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"

    def log_artifacts(self, resolved: ResolvedModel, local_dir: str | Path, artifact_path: str) -> str:
        """Log a directory next to the source model (its run) and return its artifact URI.

        Model versions registered without a run get a run of their own in the
        `modelops-conversions` experiment, so the artifacts still show in the MLflow UI.
        """
        run_id = resolved.run_id
        if not run_id:
            exp = self._call("get_experiment_by_name", self.client.get_experiment_by_name,
                             "modelops-conversions")
            exp_id = exp.experiment_id if exp else self._call(
                "create_experiment", self.client.create_experiment, "modelops-conversions")
            run = self._call("create_run", self.client.create_run, exp_id,
                             None, {"modelops.source": resolved.pinned_uri})
            run_id = run.info.run_id
            self._call("set_terminated", self.client.set_terminated, run_id)
        self._call("log_artifacts", self.client.log_artifacts, run_id, str(local_dir), artifact_path)
        run = self._call("get_run", self.client.get_run, run_id)
        return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
