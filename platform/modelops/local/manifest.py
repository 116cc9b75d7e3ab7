"""Read a ModelDeployment YAML file for local mode, with the operator's own validation.

The file is what a user would `kubectl apply`: `apiVersion`, `kind`, `metadata.name` and a `spec`
that `modelops.deployment.spec.parse_spec` checks exactly as it does for the operator. Any
problem is an `InvalidSpec` naming the field (`spec.rollout.steps`, `metadata.name`, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..deployment import API_VERSION, KIND
from ..deployment.spec import DeploymentSpec, parse_spec
from ..errors import InvalidSpec

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a DNS label, like an InferenceService name
LOCAL_NAMESPACE = "local"  # the namespace local mode reports itself under (history tags, webhooks)


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    namespace: str  # as written in the file (informational); local mode reports LOCAL_NAMESPACE
    spec: DeploymentSpec
    raw_spec: dict
    annotations: dict

    @property
    def spec_hash(self) -> str:
        """Changes when the spec changes (local mode's stand-in for metadata.generation)."""
        return hashlib.sha256(json.dumps(self.raw_spec, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def deployment_id(self) -> str:
        return f"{LOCAL_NAMESPACE}/{self.name}"


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate `path`; raises `InvalidSpec` naming the field (nothing is started)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpec("-f", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InvalidSpec("-f", f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    mds = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(mds) != 1:
        if len(docs) == 1 and isinstance(docs[0], dict):
            raise InvalidSpec("kind", f"must be {KIND}, got {docs[0].get('kind')!r}")
        raise InvalidSpec("-f", f"{path} must hold exactly one {KIND}, found {len(mds)}")
    doc = mds[0]
    if doc.get("apiVersion") != API_VERSION:
        raise InvalidSpec("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise InvalidSpec("metadata", "is required (metadata.name)")
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 63:
        raise InvalidSpec("metadata.name", f"must be a DNS label (lower case letters, digits, '-'; "
                                           f"at most 63 characters), got {name!r}")
    namespace = meta.get("namespace") or "default"
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InvalidSpec("metadata.annotations", "must be a map of strings")
    spec = parse_spec(doc.get("spec"))
    return Manifest(path=path.resolve(), name=name, namespace=str(namespace), spec=spec,
                    raw_spec=doc.get("spec"), annotations={str(k): str(v) for k, v in annotations.items()})
