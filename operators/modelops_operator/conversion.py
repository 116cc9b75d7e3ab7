"""The two ways the operator gets a model version converted to ONNX.

- `JobConversion` (default): a Kubernetes Job runs `modelops convert ... --register` in the
  converter image; the operator only reads the published result from the MLflow version tags.
  No model is ever unpickled inside the operator process.
- `InProcessConversion`: converts in the operator process (local development and tests).

Both first reuse a result already published for the same version and options.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

from modelops import errors
from modelops.deployment.facts import Served
from modelops.deployment.spec import DeploymentSpec
from modelops.deployment import storage
from modelops.deployment.storage import storage_location

from . import builders
from .config import OperatorConfig
from .kube import JOBS, PODS, Kube


@dataclass(frozen=True)
class Outcome:
    served: Served | None = None
    running: bool = False


def conversion_options(spec: DeploymentSpec):
    from modelops.conversion import ConversionOptions

    c = spec.conversion
    return ConversionOptions(precision=c.precision, opset=c.opset, rtol=c.rtol, atol=c.atol)


def _served(result, version: str, spec: DeploymentSpec, config: OperatorConfig,
            tracking_uri: str | None) -> Served:
    from modelops.rollout.interface import from_report

    where = storage_location(result.onnx_uri, config.storage_rewrites, tracking_uri,
                             file=result.bundle or storage.MODEL_FILE)
    found = from_report(result.report)
    return Served(version=version, onnx_uri=result.onnx_uri, storage_uri=where.uri,
                  storage_note=where.note, sha256=result.sha256, options=spec.conversion.fingerprint,
                  cached=bool(result.cached), interface=found.to_json() if found else None)


def published(registry, resolved, spec: DeploymentSpec, config: OperatorConfig, *,
              fresh: bool = True) -> Served | None:
    from modelops.conversion import find_published

    # fresh: the reconciler resolved the version in this pass, so its tags are current.
    result = find_published(registry, resolved, conversion_options(spec), fresh=fresh)
    return None if result is None else _served(result, resolved.version, spec, config, registry.tracking_uri)


class InProcessConversion:
    def __init__(self, config: OperatorConfig):
        self.config = config

    def convert(self, md: dict, spec: DeploymentSpec, registry, resolved) -> Outcome:
        from modelops.conversion import convert_and_publish

        result = convert_and_publish(registry, resolved, conversion_options(spec),
                                     work_dir=self.config.work_dir)
        return Outcome(served=_served(result, resolved.version, spec, self.config, registry.tracking_uri))


class JobConversion:
    def __init__(self, config: OperatorConfig, kube: Kube):
        self.config = config
        self.kube = kube

    def convert(self, md: dict, spec: DeploymentSpec, registry, resolved) -> Outcome:
        found = published(registry, resolved, spec, self.config)
        if found is not None:
            return Outcome(served=found)
        ns = md["metadata"]["namespace"]
        name = builders.job_name(md["metadata"]["name"], resolved.version, spec.conversion.fingerprint)
        job = self.kube.get(JOBS.path(ns, name))
        generation = str(md["metadata"].get("generation", 1))
        if job is not None and job_state(job) == "Failed" and \
                job["metadata"].get("annotations", {}).get(builders.ANNOTATION_GENERATION) != generation:
            # A spec edit is the user's way to say "try again": replace the failed Job.
            self.kube.delete(JOBS.path(ns, name))
            job = None
        if job is None:
            body = builders.build_conversion_job(
                md, spec, resolved.version, tracking_uri=registry.tracking_uri,
                image=self.config.converter_image,
                service_account=self.config.converter_service_account,
                deadline_seconds=self.config.job_timeout, resources=self.config.converter_resources)
            self.kube.create(JOBS.path(ns), body)
            return Outcome(running=True)
        state = job_state(job)
        if state == "Complete":
            # The Job may have finished after this pass resolved the version: read the tags again.
            found = published(registry, resolved, spec, self.config, fresh=False)
            if found is None:
                raise errors.ConversionError(
                    f"conversion Job {name} finished but published no result for "
                    f"{resolved.label}; see its logs")
            return Outcome(served=found)
        if state == "Failed":
            message = self._failure_message(ns, name, job)
            reported = CLI_ERROR.search(message)
            if reported is None:
                raise errors.ConversionError(f"conversion Job {name} failed: {message}")
            error = errors.from_reason(reported["reason"], f"conversion Job {name}: {reported['message']}")
            if error.retryable:
                # The Job met a passing condition (MLflow down): the next pass starts a new one.
                self.kube.delete(JOBS.path(ns, name))
            raise error
        return Outcome(running=True)

    def _failure_message(self, ns: str, name: str, job: dict) -> str:
        """The converter's own last words (termination message), else the Job's condition."""
        for pod in self.kube.list(PODS.path(ns), label_selector=f"job-name={name}"):
            for cs in pod.get("status", {}).get("containerStatuses", []):
                msg = (cs.get("state", {}).get("terminated") or {}).get("message")
                if msg:
                    return msg.strip()[-2000:]
        cond = next((c for c in job.get("status", {}).get("conditions", []) if c.get("type") == "Failed"), {})
        return cond.get("message") or cond.get("reason") or "unknown error"


# The converter CLI's failure line: `modelops: <Reason>: <message>` (see modelops.cli).
CLI_ERROR = re.compile(r"^modelops: (?P<reason>[A-Z]\w+): (?P<message>.+)$", re.M)


def job_state(job: dict) -> str:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"]
    return "Running"
