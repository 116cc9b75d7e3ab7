"""Check a ModelDeployment `spec` against the CRD's own schema, as the API server would.

`validated(raw)` returns the spec with every schema default filled in, or raises `InvalidSpec`
naming the first bad field (`spec.rollout.steps: rollout.steps must end at 100`). The steps
follow the API server's order:

1. nulls are dropped (the API server prunes null fields that are not `nullable`); an unquoted
   model version (`version: 3`) is read as the string it must be;
2. defaults are filled in from the schema's `default`s. Unlike the API server, an absent object
   whose fields have defaults is created with them (the typed spec needs every value; the objects
   created hold only valid defaults, so what is accepted is the same);
3. the structural schema (types, limits, patterns, enums, required fields) with `jsonschema`;
4. only if that passed, the `x-kubernetes-validations` CEL rules through their Python twins
   (`schema.CEL_TWINS`), parents before children, in schema order.

Nothing here restates a limit: the schema is read at call time (`schema.SPEC_SCHEMA`), so a
changed schema changes the validator with it.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from ..errors import InvalidSpec
from . import schema

# Friendlier words for the patterns a user meets most; any other pattern is quoted as is.
_PATTERN_WORDS = {
    schema.DURATION_PATTERN: "is not a duration such as 60s, 5m or 1h30m",
    schema.QUANTITY_PATTERN: "is not a Kubernetes quantity",
    schema.URL_PATTERN: "is not an http:// or https:// URL",
}
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "object": "an object", "array": "a list"}

_cache: tuple[dict, jsonschema.protocols.Validator] | None = None


def _validator(spec_schema: dict):
    global _cache
    if _cache is None or _cache[0] is not spec_schema:
        # The Kubernetes OpenAPI dialect is close to Draft 4 (x-kubernetes-* keywords are ignored;
        # Draft 4's integer excludes 1.0 and booleans, as the API server's does).
        _cache = (spec_schema, jsonschema.Draft4Validator(spec_schema))
    return _cache[1]


def path_text(parts) -> str:
    """`("spec", "rollout", "steps", 1)` -> `spec.rollout.steps[1]`."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# --- 1. and 2.: what the API server does before validating ---------------------------------
def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _creates_defaults(node: dict) -> bool:
    return node.get("type") == "object" and not node.get("required") and any(
        "default" in sub or _creates_defaults(sub) for sub in node.get("properties", {}).values())


def with_defaults(value: Any, node: dict, path: str = "") -> Any:
    """`value` with the defaults of `node` filled in (a new object; `value` is not changed).
    `path`: the dotted spec path of `node` ("" for the spec itself); an absent object named in
    `schema.OPT_IN_OBJECTS` (its presence turns a feature on) is not created."""
    if isinstance(value, dict) and node.get("type") == "object":
        out = dict(value)
        for key, sub in node.get("properties", {}).items():
            here = f"{path}{key}"
            if key in out:
                out[key] = with_defaults(out[key], sub, here + ".")
            elif "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            elif _creates_defaults(sub) and here not in schema.OPT_IN_OBJECTS:
                out[key] = with_defaults({}, sub, here + ".")
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [with_defaults(v, node["items"], path) for v in value]
    return value


# --- 3.: the structural schema ---------------------------------------------------------------
def _shown(value: Any) -> str:
    return type(value).__name__ if isinstance(value, (dict, list)) else repr(value)


def _structural(error: jsonschema.ValidationError) -> InvalidSpec:
    path = path_text(("spec", *error.absolute_path))
    kw, want, got, node = error.validator, error.validator_value, error.instance, error.schema
    if kw == "required":
        missing = next((k for k in want if k not in got), want[0])
        return InvalidSpec(f"{path}.{missing}", "is required")
    if kw == "type":
        return InvalidSpec(path, f"must be {_TYPE_WORDS.get(want, want)}, got {_shown(got)}")
    if kw in ("minimum", "maximum"):
        if "minimum" in node and "maximum" in node:
            return InvalidSpec(path, f"must be between {node['minimum']} and {node['maximum']}, got {got}")
        return InvalidSpec(path, f"must be at {'least' if kw == 'minimum' else 'most'} {want}, got {got}")
    if kw == "enum":
        return InvalidSpec(path, f"must be one of {', '.join(map(str, want))}, got {got!r}")
    if kw == "pattern":
        return InvalidSpec(path, f"{got!r} {_PATTERN_WORDS.get(want, f'does not match {want}')}")
    if kw == "minLength":
        return InvalidSpec(path, "must be a non-empty string" if want == 1 else f"must be at least {want} characters")
    if kw == "maxLength":
        return InvalidSpec(path, f"must be at most {want} characters")
    if kw in ("minItems", "maxItems"):
        return InvalidSpec(path, f"must have at {'least' if kw == 'minItems' else 'most'} {want} items, "
                                 f"got {len(got)}")
    if kw in ("minProperties", "maxProperties"):
        return InvalidSpec(path, f"must have at {'least' if kw == 'minProperties' else 'most'} {want} entries")
    if kw == "anyOf" and node.get("x-kubernetes-int-or-string"):
        return InvalidSpec(path, f"must be an integer or a string, got {_shown(got)}")
    return InvalidSpec(path, error.message)


# --- 4.: the CEL rules, through their twins --------------------------------------------------
def rule_holds(rule: str, value: Any) -> bool:
    """The verdict of one `x-kubernetes-validations` rule on `value` (its `self`)."""
    twin = schema.CEL_TWINS.get(rule)
    if twin is None:
        raise LookupError(f"CEL rule without a Python twin in modelops.deployment.schema: {rule}")
    try:
        return bool(twin(value))
    except (KeyError, TypeError, IndexError):
        return False  # the API server reports a rule that cannot evaluate as a failure


def cel_failures(value: Any, node: dict, path: tuple = ("spec",)):
    """(path, message) of every failing rule under `node`, parents first, in schema order."""
    for rule in node.get("x-kubernetes-validations", []):
        if not rule_holds(rule["rule"], value):
            yield path_text(path), rule.get("message", rule["rule"])
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key in value:
                yield from cel_failures(value[key], sub, path + (key,))
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - node.get("properties", {}).keys():
                yield from cel_failures(value[key], extra, path + (key,))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            yield from cel_failures(item, node["items"], path + (i,))


def validated(raw: Any, spec_schema: dict | None = None) -> dict:
    """The spec, nulls dropped and defaults filled in, once it passes the schema and its rules;
    else `InvalidSpec` naming the first bad field."""
    spec_schema = schema.SPEC_SCHEMA if spec_schema is None else spec_schema
    if raw is None:
        raise InvalidSpec("spec", "is required")
    data = _drop_nulls(raw)
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict):
        version = model.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            data["model"] = {**model, "version": str(version)}  # tolerated outside the API server
    data = with_defaults(data, spec_schema)
    # jsonschema walks the schema in order: the first error is the first field, as the parser
    # has always reported (model before rollout, a node's own type before its fields).
    first = next(_validator(spec_schema).iter_errors(data), None)
    if first is not None:
        raise _structural(first)
    for path, message in cel_failures(data, spec_schema):
        raise InvalidSpec(path, message)
    return data

