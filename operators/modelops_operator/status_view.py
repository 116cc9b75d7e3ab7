"""`modelops status NAME [-n NS]`: one readable view of a ModelDeployment, from the cluster.

    modelops status NAME [-n NAMESPACE] [--kubeconfig PATH] [--context CTX] [--tracking-uri URI]
                    [-o text|yaml|json]

Shows the model and the versions (resolved, serving, canary with its weight and step, last
failed), the phase, the conditions with their reasons, the InferenceService KServe reports on,
the conversion Jobs, the recent Events of the ModelDeployment and its InferenceService, and links
to the model versions in the MLflow UI. Reads only (get/list); exit 3 when the ModelDeployment
does not exist, 75 when the API server cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from modelops import errors
from modelops.deployment import GROUP, PLURAL, VERSION

from . import builders

EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 75


class DeploymentNotFound(errors.ModelOpsError):
    reason = "NotFound"


class ClusterUnavailable(errors.ModelOpsError):
    reason = "KubernetesUnavailable"
    retryable = True


@dataclass
class Snapshot:
    """What the cluster says about one ModelDeployment."""

    md: dict
    isvc: dict | None = None
    jobs: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


# --- reading the cluster ---------------------------------------------------------------------------
def api_client(kubeconfig: str | None = None, context: str | None = None):
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, FileNotFoundError, TypeError):
        if kubeconfig or context:
            raise
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def fetch(api, namespace: str, name: str) -> Snapshot:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(api)
    try:
        md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            raise DeploymentNotFound(f"ModelDeployment {namespace}/{name} not found") from exc
        raise
    snap = Snapshot(md=md)

    def optional(read, missing=(403,)):
        """What the viewer may not see (or what does not exist yet) is left out, not an error."""
        try:
            return read()
        except ApiException as exc:
            if exc.status not in missing:
                raise
            return None

    snap.isvc = optional(lambda: custom.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name), missing=(404, 403))
    jobs = optional(lambda: client.BatchV1Api(api).list_namespaced_job(
        namespace, label_selector=f"{builders.LABEL_DEPLOYMENT}={name}"))
    if jobs is not None:
        snap.jobs = api.sanitize_for_serialization(jobs.items)
    events = optional(lambda: client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"))
    if events is not None:
        snap.events = api.sanitize_for_serialization(events.items)
    return snap


# --- formatting ------------------------------------------------------------------------------------
def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def age(text: str | None, now: datetime.datetime) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    when = _parse_time(text)
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def mlflow_link(tracking_uri: str | None, model: str, version: str | None) -> str | None:
    if not tracking_uri or not version or not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/models/{model}/versions/{version}"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _job_state(job: dict) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"] + (f" ({cond['reason']})" if cond.get("reason") else "")
    return "Running"


def format_status(snap: Snapshot, *, now: datetime.datetime | None = None,
                  tracking_uri: str | None = None, max_events: int = 10) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    md = snap.md
    meta, spec, status = md["metadata"], md.get("spec") or {}, md.get("status") or {}
    model = spec.get("model") or {}
    name = model.get("name", "?")
    uri = (spec.get("registry") or {}).get("trackingUri") or tracking_uri
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    lines = [f"ModelDeployment {meta['namespace']}/{meta['name']}  (generation {generation}, observed "
             f"{observed if observed is not None else '-'}; age {age(meta.get('creationTimestamp'), now)})"]
    if observed is not None and generation is not None and observed < generation:
        lines.append("  the operator has not observed the latest spec yet")
    ref = f"@{model['alias']}" if model.get("alias") else f"version {model.get('version')}"
    resolved = status.get("resolvedVersion")
    lines.append(f"Model:      {name} {ref}" + (f" -> v{resolved}" if resolved and model.get("alias") else ""))
    lines.append(f"Phase:      {status.get('phase') or 'Pending'}")
    stable = status.get("stable") or {}
    if stable.get("version"):
        conv = spec.get("conversion") or {}
        lines.append(f"Serving:    v{stable['version']}  ({conv.get('precision', 'fp32')}, opset "
                     f"{conv.get('opset', 17)}; sha256 {str(stable.get('sha256', ''))[:12]})")
        lines.append(f"            {stable.get('storageUri') or stable.get('onnxUri')}")
    canary = status.get("canary") or {}
    if canary.get("version"):
        steps = (spec.get("rollout") or {}).get("steps") or [10, 50, 100]
        weight = canary.get("weight")
        step = canary.get("step")
        if step is None and weight in steps:
            step = steps.index(weight) + 1
        where = f", step {step} of {len(steps)} ({', '.join(map(str, steps))})" if step else ""
        lines.append(f"Canary:     v{canary['version']} at {weight if weight is not None else '?'}%{where}")
    failed = status.get("failed") or {}
    if failed.get("version"):
        lines.append(f"Failed:     v{failed['version']}: {failed.get('reason', '')}: {failed.get('message', '')}")
    if status.get("url"):
        lines.append(f"URL:        {status['url']}")
    links = []
    for label, version in (("serving", stable.get("version")), ("canary", canary.get("version")),
                           ("resolved", resolved), ("failed", failed.get("version"))):
        link = mlflow_link(uri, name, version)
        if link and link not in [lnk for _, lnk in links]:
            links.append((label, link))
    if links:
        lines.append("MLflow:     " + "\n            ".join(f"{label}: {link}" for label, link in links))

    conditions = status.get("conditions") or []
    if conditions:
        lines += ["", "Conditions:"]
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        for c in conditions:
            rows.append([c.get("type", ""), c.get("status", ""), c.get("reason", ""),
                         age(c.get("lastTransitionTime"), now), (c.get("message") or "")[:160]])
        lines += _table(rows)

    lines += ["", "InferenceService:"]
    if snap.isvc is None:
        lines.append("  none yet")
    else:
        isvc_status = snap.isvc.get("status") or {}
        ready = next((c for c in isvc_status.get("conditions") or [] if c.get("type") == "Ready"), {})
        model_spec = snap.isvc.get("spec", {}).get("predictor", {}).get("model", {})
        version = snap.isvc["metadata"].get("labels", {}).get(builders.LABEL_VERSION, "?")
        lines.append(f"  {snap.isvc['metadata']['name']}: v{version}, Ready={ready.get('status', 'Unknown')}"
                     + (f" ({ready['reason']})" if ready.get("reason") else "")
                     + (f", {isvc_status['url']}" if isvc_status.get("url") else ""))
        if model_spec.get("storageUri"):
            lines.append(f"  storageUri {model_spec['storageUri']}")
        if ready.get("message") and ready.get("status") != "True":
            lines.append(f"  {ready['message']}")

    if snap.jobs:
        lines += ["", "Conversion Jobs:"]
        rows = [["NAME", "VERSION", "STATE", "AGE"]]
        for job in sorted(snap.jobs, key=lambda j: j["metadata"].get("creationTimestamp") or ""):
            jm = job["metadata"]
            rows.append([jm["name"], jm.get("labels", {}).get(builders.LABEL_VERSION, "?"), _job_state(job),
                         age(jm.get("creationTimestamp"), now)])
        lines += _table(rows)

    lines += ["", "Events:"]
    events = sorted(snap.events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime")
                                                  or e.get("metadata", {}).get("creationTimestamp") or ""))
    if not events:
        lines.append("  none")
    else:
        rows = [["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]]
        for e in events[-max_events:]:
            when = e.get("lastTimestamp") or e.get("eventTime") or e.get("metadata", {}).get("creationTimestamp")
            count = f" (x{e['count']})" if (e.get("count") or 1) > 1 else ""
            obj = e.get("involvedObject") or {}
            rows.append([age(when, now), e.get("type", ""), e.get("reason", ""),
                         f"{obj.get('kind', '')}", (e.get("message") or "")[:160] + count])
        lines += _table(rows)
    return "\n".join(lines) + "\n"


# --- command ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="modelops status", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="ModelDeployment name")
    ap.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's, else default")
    ap.add_argument("--kubeconfig", default=None, help="default: KUBECONFIG or ~/.kube/config (in cluster: the pod's)")
    ap.add_argument("--context", default=None)
    ap.add_argument("--tracking-uri", default=os.environ.get("MODELOPS_MLFLOW_TRACKING_URI"),
                    help="MLflow UI base for links when the ModelDeployment names none "
                         "(env MODELOPS_MLFLOW_TRACKING_URI)")
    ap.add_argument("-o", "--output", choices=["text", "yaml", "json"], default="text",
                    help="text (default), or everything read as yaml/json")
    return ap.parse_args(list(argv) if argv is not None else None)


def _namespace(args) -> str:
    if args.namespace:
        return args.namespace
    from .leader import default_namespace

    return default_namespace(args.kubeconfig)


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of `modelops status`; `argv` excludes the subcommand name."""
    import urllib3

    args = parse_args(argv)
    namespace = _namespace(args)
    try:
        api = api_client(args.kubeconfig, args.context)
        snap = fetch(api, namespace, args.name)
    except DeploymentNotFound as exc:
        print(f"modelops: {exc.reason}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except urllib3.exceptions.HTTPError as exc:
        print(f"modelops: {ClusterUnavailable.reason}: the Kubernetes API server cannot be reached: {exc}",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001 - kubeconfig problems, 401/403: one clear line
        from kubernetes.client.rest import ApiException

        if isinstance(exc, ApiException):
            print(f"modelops: KubernetesApiError: {exc.status} {exc.reason}", file=sys.stderr)
            return EXIT_UNAVAILABLE if (exc.status or 0) >= 500 else 2
        print(f"modelops: KubernetesConfigError: {exc}", file=sys.stderr)
        return 2
    if args.output == "text":
        sys.stdout.write(format_status(snap, tracking_uri=args.tracking_uri))
    else:
        data = {"modelDeployment": snap.md, "inferenceService": snap.isvc, "jobs": snap.jobs, "events": snap.events}
        sys.stdout.write(json.dumps(data, indent=2) + "\n" if args.output == "json"
                         else yaml.safe_dump(data, sort_keys=False, width=100))
    return 0
