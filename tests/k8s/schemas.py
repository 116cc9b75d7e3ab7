"""Validate objects against CRD openAPIV3Schemas, including their CEL rules.

OpenAPI v3 structural schemas are checked with jsonschema (Draft 4 semantics, which is what the
Kubernetes OpenAPI dialect is close to; `x-kubernetes-*` keywords are ignored by it). The
`x-kubernetes-validations` CEL rules are evaluated with the `cel-python` package, with the one
Kubernetes list-library function our rules use (`isSorted()`) added.
"""

from __future__ import annotations

import functools
from pathlib import Path

import celpy
import jsonschema
import yaml
from celpy import celtypes

REPO_ROOT = Path(__file__).resolve().parents[2]


def kserve_crds_dir() -> Path:
    """`../shared/kserve-crds/` next to the repository (as in CI); skips (fails under CI) without it."""
    from sharedenv import require_shared

    return require_shared("kserve-crds", "validating against KServe's own CRDs")


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: KServe's 40k-line CRD in a second, not ten


def load_crd(path: Path) -> dict:
    docs = yaml.load_all(path.read_text(), Loader=_LOADER)
    return next(d for d in docs if d and d.get("kind") == "CustomResourceDefinition")


def version_schema(crd: dict, version: str | None = None) -> dict:
    for v in crd["spec"]["versions"]:
        if version is None or v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(version)


@functools.lru_cache(maxsize=None)
def kserve_schema(filename: str, version: str) -> dict:
    """Parsed once per session (callers only read it)."""
    return version_schema(load_crd(kserve_crds_dir() / filename), version)


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_errors(obj: dict, schema: dict) -> list[tuple[str, str]]:
    """(field path, message) of every structural-schema violation."""
    validator = jsonschema.Draft4Validator(schema)
    return [(_path(e.absolute_path), e.message) for e in validator.iter_errors(obj)]


# --- CEL -------------------------------------------------------------------------------------
def _is_sorted(value):
    items = list(value)
    return celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:])))


_ENV = celpy.Environment()
_PROGRAMS: dict[str, object] = {}


def eval_rule(rule: str, value) -> bool:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule), functions={"isSorted": _is_sorted})
    result = _PROGRAMS[rule].evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, celpy.CELEvalError):
        return False  # the API server reports an evaluation error as a validation failure
    return bool(result)


def cel_errors(obj, schema: dict, path: tuple = ()) -> list[tuple[str, str]]:
    """(field path, message) of every failing `x-kubernetes-validations` rule."""
    errors: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not eval_rule(rule["rule"], obj):
            errors.append((_path(path), rule.get("message", rule["rule"])))
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                errors += cel_errors(value, sub, path + (key,))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            errors += cel_errors(value, schema["items"], path + (i,))
    return errors


def all_errors(obj: dict, schema: dict) -> list[tuple[str, str]]:
    # The API server reports schema and CEL violations together.
    return schema_errors(obj, schema) + cel_errors(obj, schema)


def walk_schema(schema: dict, path: tuple = ()):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk_schema(sub, path + (key,))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from walk_schema(schema[key], path + (f"<{key}>",))
