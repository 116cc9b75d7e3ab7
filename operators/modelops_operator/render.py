"""`modelops render -f md.yaml`: the objects the operator would create for a ModelDeployment, offline.

    modelops render -f md.yaml [--resolve] [--version V] [--storage-uri URI] [-o yaml|json]
                    [--tracking-uri URI] [--runtime NAME] [--converter-image IMAGE]
                    [--converter-service-account SA] [--storage-uri-rewrite FROM=TO ...]

Prints the InferenceService and, when the model still needs converting, the conversion Job, from
the operator's own builders (`modelops_operator.builders`) and the same settings (flags and
`MODELOPS_*` environment variables as `modelops operator`). No cluster is contacted.

What only MLflow knows is a placeholder unless given: the version an alias points to (`--version`)
and where the converted ONNX lives (`--storage-uri`). `--resolve` asks MLflow (read-only): the
alias's version, and a conversion already published for these options (then there is no Job,
as the operator would reuse it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import yaml

from modelops import errors
from modelops.deployment import API_VERSION, KIND
from modelops.deployment.facts import Served
from modelops.deployment.spec import DeploymentSpec, parse_spec
from modelops.deployment.storage import parse_rewrites, storage_uri

from . import builders
from .config import DEFAULT_CONVERTER_IMAGE, DEFAULT_RUNTIME

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
# Stands for the version an alias points to when neither --version nor --resolve says it.
PLACEHOLDER_VERSION = "0"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    ap = argparse.ArgumentParser(prog="modelops render", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML (several documents allowed); - for stdin")
    ap.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    ap.add_argument("--resolve", action="store_true",
                    help="ask MLflow (read-only) for the alias's version and a published conversion")
    ap.add_argument("--version", help="the version an alias resolves to (default: a placeholder, or --resolve)")
    ap.add_argument("--storage-uri", help="the converted ONNX's storageUri (default: a placeholder, or --resolve)")
    ap.add_argument("--tracking-uri", default=env.get("MODELOPS_MLFLOW_TRACKING_URI"),
                    help="default MLflow tracking URI (env MODELOPS_MLFLOW_TRACKING_URI)")
    ap.add_argument("--runtime", default=env.get("MODELOPS_RUNTIME", DEFAULT_RUNTIME))
    ap.add_argument("--converter-image", default=env.get("MODELOPS_CONVERTER_IMAGE", DEFAULT_CONVERTER_IMAGE))
    ap.add_argument("--converter-service-account", default=env.get("MODELOPS_CONVERTER_SERVICE_ACCOUNT") or None)
    ap.add_argument("--storage-uri-rewrite", action="append", metavar="FROM=TO",
                    default=[r for r in env.get("MODELOPS_STORAGE_URI_REWRITES", "").split(",") if r])
    return ap.parse_args(list(argv) if argv is not None else None)


def load_deployments(path: str) -> list[dict]:
    text = sys.stdin.read() if path == "-" else open(path).read()
    try:
        found = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise errors.InvalidSpec(path, f"not YAML: {exc}") from exc
    mds = []
    for i, doc in enumerate(found):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        if doc.get("apiVersion") != API_VERSION:
            raise errors.InvalidSpec(f"{path}[{i}].apiVersion", f"expected {API_VERSION}, got {doc.get('apiVersion')!r}")
        if not (doc.get("metadata") or {}).get("name"):
            raise errors.InvalidSpec(f"{path}[{i}].metadata.name", "is required")
        mds.append(doc)
    if not mds:
        raise errors.InvalidSpec(path, f"no {KIND} in the file")
    return mds


def _metadata(md: dict) -> dict:
    """What the API server would have added: namespace, uid, generation."""
    meta = dict(md["metadata"])
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", PLACEHOLDER_UID)
    meta.setdefault("generation", 1)
    return {**md, "metadata": meta}


def _resolve(spec: DeploymentSpec, tracking_uri: str | None, rewrites):
    """(version, Served or None) from MLflow, read-only."""
    from modelops.conversion import ConversionOptions, find_published
    from modelops.registry import Registry

    uri = spec.registry.tracking_uri or tracking_uri
    if not uri:
        raise errors.InvalidSpec("spec.registry.trackingUri",
                                 "--resolve needs an MLflow tracking URI: set it here, --tracking-uri "
                                 "or MODELOPS_MLFLOW_TRACKING_URI")
    registry = Registry(uri)
    resolved = registry.resolve_version(spec.model.name, version=spec.model.version, alias=spec.model.alias)
    c = spec.conversion
    result = find_published(registry, resolved, ConversionOptions(precision=c.precision, opset=c.opset,
                                                                  rtol=c.rtol, atol=c.atol), fresh=True)
    if result is None:
        return resolved.version, None, uri
    served = Served(version=resolved.version, onnx_uri=result.onnx_uri,
                    storage_uri=storage_uri(result.onnx_uri, rewrites), sha256=result.sha256,
                    options=c.fingerprint, cached=True)
    return resolved.version, served, uri


def render_deployment(md: dict, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The InferenceService (and the conversion Job if one would run) for one ModelDeployment,
    and notes on what in them is a placeholder."""
    md = _metadata(md)
    meta = md["metadata"]
    spec = parse_spec(md.get("spec"))
    rewrites = parse_rewrites(args.storage_uri_rewrite)
    notes = []
    served = None
    tracking_uri = spec.registry.tracking_uri or args.tracking_uri
    if args.resolve:
        version, served, tracking_uri = _resolve(spec, args.tracking_uri, rewrites)
        notes.append(f"{spec.model.uri} resolved to version {version} in MLflow {tracking_uri}"
                     + ("; a conversion is already published: no Job" if served else ""))
    else:
        version = spec.model.version or args.version
        if version is None:
            version = PLACEHOLDER_VERSION
            notes.append(f"{meta['name']} follows {spec.model.uri}: version {PLACEHOLDER_VERSION} stands for the "
                         "version it points to (give --version, or --resolve to ask MLflow)")
    if served is None:
        label = f"models:/{spec.model.name}/{version}"
        onnx = args.storage_uri or (f"<ONNX of {label} ({spec.conversion.precision}, opset "
                                    f"{spec.conversion.opset}), known after conversion>")
        if not args.storage_uri:
            notes.append(f"storageUri and sha256 of {meta['name']} are known once {label} is converted "
                         "(give --storage-uri, or --resolve)")
        served = Served(version=version, onnx_uri=onnx,
                        storage_uri=storage_uri(onnx, rewrites) if args.storage_uri else onnx,
                        sha256="<sha256 of the converted ONNX>", options=spec.conversion.fingerprint)
        needs_job = not args.storage_uri
    else:
        needs_job = False
    if meta["uid"] == PLACEHOLDER_UID:
        notes.append(f"the owner uid is the one the API server gives {meta['name']}")
    objects = [builders.build_inference_service(md, spec, served, runtime=args.runtime)]
    if needs_job:
        if not tracking_uri:
            notes.append("no MLflow tracking URI (spec.registry.trackingUri, --tracking-uri)")
        objects.append(builders.build_conversion_job(
            md, spec, version, tracking_uri=tracking_uri or "<MLflow tracking URI>",
            image=args.converter_image, service_account=args.converter_service_account))
    # Plain data (the builders share sub-dicts: no YAML anchors in the output).
    return json.loads(json.dumps(objects)), notes


def dump(objects: list[dict], fmt: str, notes: list[str] = ()) -> str:
    if fmt == "json":
        return json.dumps(objects[0] if len(objects) == 1 else {"apiVersion": "v1", "kind": "List", "items": objects},
                          indent=2) + "\n"
    header = "".join(f"# {note}\n" for note in notes)
    return header + "---\n".join(yaml.safe_dump(o, sort_keys=False, width=100) for o in objects)


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of `modelops render`; `argv` excludes the subcommand name."""
    args = parse_args(argv)
    try:
        parse_rewrites(args.storage_uri_rewrite)
    except ValueError as exc:
        raise errors.InvalidSpec("--storage-uri-rewrite", str(exc)) from exc
    objects, notes = [], []
    for md in load_deployments(args.filename):
        objs, why = render_deployment(md, args)
        objects += objs
        notes += why
    sys.stdout.write(dump(objects, args.output, notes))
    for note in notes if args.output == "json" else ():
        print(f"modelops render: {note}", file=sys.stderr)
    return 0
