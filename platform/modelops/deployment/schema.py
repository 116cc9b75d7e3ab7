"""The ModelDeployment CRD: the one source of truth for its schema.

This module is the spec (what users write); `status_schema` is what the operator writes, and
`crd` puts both into the CustomResourceDefinition that `scripts/gen_crd.py` writes to
`manifests/crds/` and `helm/modelops/crds/` (a test checks both files equal it). `modelops.deployment.spec` re-checks the same rules in Python for objects
that never went through an API server (local runs, the kmock emulator).

Compatibility: the CRD must install on Kubernetes 1.25+ (CEL validation on by default). So the
`x-kubernetes-validations` rules use only `rule` and `message` (`fieldPath`, `reason` and
`messageExpression` came later), only CEL functions 1.25 has (`isSorted()` from the list library,
the standard macros), a ternary instead of comparing two `has()` results with `!=` (which old
cost estimators reject), and `maxItems`/`maxLength` on everything a rule iterates or matches so
the estimated cost stays inside the API server's budget.

One definition of each thing: every limit, pattern, enum and default is written here once, in
the schema node it constrains; `modelops.deployment.spec` validates against this very schema
(jsonschema) and takes its dataclass defaults from it (`default(path)`). Each CEL rule is
declared with `_rule(rule, message, twin)`: `twin` is its Python equivalent, which the parser runs
(cel-python, with its RE2 and date-library dependencies, stays a test tool);
`tests/k8s/test_crd_schema.py` proves every twin agrees with its rule, evaluated by cel-python as
the API server would, on the test corpus, and that no rule lacks a twin.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable

from . import API_VERSION
from .schema_judging import performance_gate_node, shadow_node

PRECISIONS = ["fp32", "fp16", "int8"]
STRATEGIES = ["canary", "replace"]
PHASES = ["Pending", "Converting", "Deploying", "Progressing", "Ready", "RolledBack", "Failed"]
CONDITION_TYPES = ["Ready", "Reconciling", "Stalled", "Converted", "Progressing", "RolledBack"]
DEPLOYMENT_MODES = ["Standard", "Knative"]
AUTH_MODES = ["none", "kubernetes"]
# The rollout engine's phases (`modelops.rollout.Phase`), shown in status.canary.phase.
ROLLOUT_PHASES = ["Idle", "Stable", "WaitingForGate", "PerformanceGate", "Shadow", "Progressing", "Paused",
                  "AwaitingPromotion", "Promoted", "RolledBack"]
# The phases in which a canary exists (it may hold 0% while waiting for a gate, under its
# performance gate or in shadow): Phase.active.
ACTIVE_ROLLOUT_PHASES = ["WaitingForGate", "PerformanceGate", "Shadow", "Progressing", "Paused", "AwaitingPromotion"]
# The rollout transitions a webhook can subscribe to (modelops.rollout.EVENTS).
HOOK_EVENTS = ["Started", "StepAdvanced", "Promoted", "RolledBack", "Failed", "ShadowStarted", "ShadowPassed",
               "ShadowFailed", "PerformanceGatePassed", "PerformanceGateFailed"]
GATE_TYPES = ["preRollout", "confirmPromotion"]
CHECK_OUTCOMES = ["Passed", "Failed", "Inconclusive", "Skipped"]
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS label: hook and check names
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
URL_PATTERN = r"^https?://.+"

# A Go duration as `time.ParseDuration` reads it, restricted to the units that make sense here.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# Kubernetes resource.Quantity (the API server's own regex, simplified to its accepted forms).
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
MODEL_NAME_MAX = 256
ALIAS_PATTERN = r"^[A-Za-z0-9_\-]+$"
VERSION_PATTERN = r"^[1-9][0-9]{0,8}$"  # an MLflow model version number

# Objects whose presence turns a feature on (absent: off, as the API server leaves them): the
# parser does not create them with their fields' defaults, unlike other absent objects.
OPT_IN_OBJECTS = frozenset({"rollout.shadow", "rollout.shadow.checks.cosine", "rollout.performanceGate"})

# --- CEL rules, each with its Python twin ----------------------------------------------------
# rule text -> a function of the rule's `self` (plain JSON data) giving the rule's verdict.
CEL_TWINS: dict[str, Callable[[Any], bool]] = {}


def _rule(rule: str, message: str, twin: Callable[[Any], bool]) -> dict:
    """An `x-kubernetes-validations` entry; `twin` must decide exactly as the CEL `rule` does
    (`has(x.f)` is `"f" in x`: the parser drops nulls first, as the API server prunes them)."""
    if CEL_TWINS.setdefault(rule, twin) is not twin:
        raise ValueError(f"CEL rule declared twice with different twins: {rule}")
    return {"rule": rule, "message": message}


def _not_latest_nor_version(field: str) -> dict:
    return _rule("self != 'latest' && !self.matches('^[vV][0-9]+$')",
                 f"{field} must not be 'latest' nor look like a version (v3)",
                 _alias_twin)


def _alias_twin(s: str) -> bool:
    return s != "latest" and not re.search(r"^[vV][0-9]+$", s)


def _unique_names_twin(items: list) -> bool:
    names = [i["name"] for i in items]
    return all(names.count(n) == 1 for n in names)


def _strictly_increasing_twin(steps: list) -> bool:
    return all(a <= b for a, b in zip(steps, steps[1:])) and all(steps.count(s) == 1 for s in steps)

def _defaults_in(node: dict, prefix: str = ""):
    """(dotted path, default) of every default under an object schema node, in schema order."""
    for key, sub in node.get("properties", {}).items():
        if "default" in sub:
            yield prefix + key, sub["default"]
        yield from _defaults_in(sub, f"{prefix}{key}.")


_quantity_map = {
    "type": "object",
    "maxProperties": 16,
    "additionalProperties": {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "pattern": QUANTITY_PATTERN,
    },
}

_secret_ref = {
    "type": "object",
    "description": "A key of a Secret in the ModelDeployment's namespace.",
    "required": ["name", "key"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": SECRET_NAME_PATTERN},
        "key": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[-._a-zA-Z0-9]+$"},
    },
}

_unique_names_rule = _rule("self.all(a, self.exists_one(b, b.name == a.name))", "names must be unique",
                           _unique_names_twin)

_check = {
    "type": "object",
    "description": "A user PromQL check: the query's single value must lie within [min, max]. "
                   "$model, $version, $stable_version, $namespace and $window are substituted.",
    "required": ["name", "query"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN},
        "query": {"type": "string", "minLength": 1, "maxLength": 4096},
        "min": {"type": "number"},
        "max": {"type": "number"},
    },
    "x-kubernetes-validations": [
        _rule("has(self.min) || has(self.max)", "a check needs min or max",
              lambda c: "min" in c or "max" in c),
        _rule("!has(self.min) || !has(self.max) || self.min <= self.max",
              "a check's min must not exceed its max",
              lambda c: "min" not in c or "max" not in c or c["min"] <= c["max"]),
    ],
}

_SUCCESS_RATE_MIN = 0.99
_CLIENT_ERRORS_MAX_INCREASE = 0.01
_analysis_properties = {
    "successRate": {
        "type": "object",
        "description": "Canary requests answered without a 5xx, as a fraction of all its requests.",
        "properties": {
            "min": {"type": "number", "minimum": 0, "maximum": 1, "default": _SUCCESS_RATE_MIN,
                    "description": f"Absolute floor (default {_SUCCESS_RATE_MIN}; 0 turns the check off)."},
            "maxDrop": {"type": "number", "minimum": 0, "maximum": 1,
                        "description": "At most this far below the stable version's rate."},
        },
    },
    "p99LatencyMs": {
        "type": "object",
        "description": "The canary's 99th-percentile request latency.",
        "properties": {
            "max": {"type": "number", "minimum": 0, "description": "Absolute ceiling in ms."},
            "maxRatio": {"type": "number", "minimum": 1, "maximum": 100,
                         "description": "At most this multiple of the stable version's p99 (1.2)."},
        },
    },
    "clientErrors": {
        "type": "object",
        "description": "clientErrorsVsStable: the canary's share of 4xx answers (refused requests) "
                       "against the stable version's over the same interval; a request the serving "
                       "version accepts and the canary refuses is the canary's failure.",
        "properties": {
            "maxIncrease": {"type": "number", "minimum": 0, "maximum": 1,
                            "default": _CLIENT_ERRORS_MAX_INCREASE,
                            "description": "At most this far above the stable version's share "
                                           f"(default {_CLIENT_ERRORS_MAX_INCREASE}, one percentage "
                                           "point; 1 turns the check off)."},
        },
    },
    "minRequests": {"type": "integer", "minimum": 0, "maximum": 1000000000, "default": 10,
                    "description": "Canary requests needed in an interval before it can pass; "
                                   "fewer is inconclusive."},
    "failureLimit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 2,
                     "description": "Failed analyses of a canary before it is rolled back."},
    "inconclusiveLimit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3,
                          "description": "Inconclusive analyses in a row before it is rolled back."},
    "prometheusUrl": {"type": "string", "maxLength": 2048, "pattern": URL_PATTERN,
                      "description": "Overrides the operator's --prometheus-url."},
    "checks": {"type": "array", "maxItems": 16, "items": _check,
               "x-kubernetes-validations": [_unique_names_rule]},
}
_analysis = {
    "type": "object",
    "description": "How each canary step is judged. Defaults: " + ", ".join(
        f"{path} {value}" for path, value in _defaults_in({"properties": _analysis_properties})) + ".",
    "properties": _analysis_properties,
}

_shadow = shadow_node(DURATION_PATTERN)
_performance_gate = performance_gate_node(DURATION_PATTERN)

_webhook = {
    "type": "object",
    "required": ["name", "url"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN},
        "url": {"type": "string", "maxLength": 2048, "pattern": URL_PATTERN},
        "events": {"type": "array", "maxItems": len(HOOK_EVENTS), "items": {"type": "string", "enum": HOOK_EVENTS},
                   "default": list(HOOK_EVENTS), "description": "Events to deliver (default: all)."},
        "secretRef": _secret_ref,
    },
}

_gate = {
    "type": "object",
    "required": ["name", "url", "type"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN},
        "url": {"type": "string", "maxLength": 2048, "pattern": URL_PATTERN},
        "type": {"type": "string", "enum": GATE_TYPES,
                 "description": "preRollout: before any traffic moves; confirmPromotion: before promoting."},
        "secretRef": _secret_ref,
    },
}

_toleration = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "maxLength": 253},
        "operator": {"type": "string", "enum": ["Exists", "Equal"]},
        "value": {"type": "string", "maxLength": 63},
        "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": "integer", "format": "int64"},
    },
}

_label_map = {"type": "object", "maxProperties": 16,
              "additionalProperties": {"type": "string", "maxLength": 63}}

# Who may reach and call the predictor (README "Security"): auth, TLS, a NetworkPolicy.
_predictor_access = {
    "auth": {"type": "string", "enum": AUTH_MODES,
             "description": "kubernetes: callers need a bearer token that TokenReview accepts and that RBAC "
                            "allows to get modeldeployments/predict on this ModelDeployment. Unset: the "
                            "operator's default (chart value predictor.auth, itself 'none')."},
    "tls": {
        "type": "object", "required": ["secretName"],
        "description": "Serve HTTPS and gRPC over TLS from a kubernetes.io/tls Secret (tls.crt, tls.key; "
                       "e.g. a cert-manager Certificate's), reloaded when it changes.",
        "properties": {"secretName": {"type": "string", "minLength": 1, "maxLength": 253,
                                      "pattern": SECRET_NAME_PATTERN}},
    },
    "networkPolicy": {
        "type": "object",
        "description": "Create a NetworkPolicy admitting to the predictor only these peers (plus the "
                       "operator's metrics scraper). Each peer: pods matching podSelector in namespaces "
                       "matching namespaceSelector (either alone: every namespace / every pod).",
        "required": ["from"],
        "properties": {"from": {"type": "array", "minItems": 1, "maxItems": 16, "items": {
            "type": "object",
            "properties": {"namespaceSelector": {"type": "object", "properties": {"matchLabels": _label_map}},
                           "podSelector": {"type": "object", "properties": {"matchLabels": _label_map}}},
            "x-kubernetes-validations": [_rule(
                "has(self.namespaceSelector) || has(self.podSelector)",
                "a networkPolicy peer needs namespaceSelector or podSelector",
                lambda peer: "namespaceSelector" in peer or "podSelector" in peer)],
        }}},
    },
}

SPEC_SCHEMA: dict = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {
            "type": "object",
            "description": "The MLflow registered model to serve: exactly one of version or alias.",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": MODEL_NAME_MAX,
                         "description": "MLflow registered model name."},
                "version": {"type": "string", "pattern": VERSION_PATTERN, "maxLength": 9,
                            "description": "Pinned model version (quote it: \"3\")."},
                "alias": {
                    "type": "string", "minLength": 1, "maxLength": 255, "pattern": ALIAS_PATTERN,
                    "description": "Registered-model alias to follow (e.g. champion).",
                    "x-kubernetes-validations": [_not_latest_nor_version("alias")],
                },
            },
            "x-kubernetes-validations": [_rule(
                # A ternary, not `has(self.version) != has(self.alias)`: 1.25's cost estimator
                # rejects comparing two has() results.
                "has(self.version) ? !has(self.alias) : has(self.alias)",
                "exactly one of model.version or model.alias must be set",
                lambda m: ("version" in m) != ("alias" in m))],
        },
        "registry": {
            "type": "object",
            "properties": {
                "trackingUri": {"type": "string", "maxLength": 2048, "pattern": URL_PATTERN,
                                "description": "MLflow tracking server; the operator's default otherwise."},
                "credentialsSecret": {
                    "type": "string", "maxLength": 253,
                    "pattern": SECRET_NAME_PATTERN,
                    "description": "Secret (same namespace) with MLflow/artifact-store credentials "
                                   "as environment variables, given to the conversion Job only.",
                },
            },
        },
        "conversion": {
            "type": "object",
            "properties": {
                "precision": {"type": "string", "enum": PRECISIONS, "default": "fp32"},
                "opset": {"type": "integer", "minimum": 7, "maximum": 23, "default": 17},
                "tolerance": {
                    "type": "object",
                    "properties": {
                        "rtol": {"type": "number", "minimum": 0, "maximum": 1},
                        "atol": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "predictor": {
            "type": "object",
            "properties": {
                "gpu": {"type": "integer", "minimum": 0, "maximum": 16, "default": 0,
                        "description": "nvidia.com/gpu per replica; 0 serves on CPU."},
                "minReplicas": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 1},
                "maxReplicas": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
                "resources": {
                    "type": "object",
                    "properties": {"requests": _quantity_map, "limits": _quantity_map},
                },
                "nodeSelector": {"type": "object", "maxProperties": 32,
                                 "additionalProperties": {"type": "string", "maxLength": 63}},
                "tolerations": {"type": "array", "maxItems": 32, "items": _toleration},
                "deploymentMode": {"type": "string", "enum": DEPLOYMENT_MODES, "default": "Standard",
                                   "description": "KServe deployment mode of the InferenceService."},
                **_predictor_access,
            },
            "x-kubernetes-validations": [_rule(
                "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "predictor.minReplicas must not exceed predictor.maxReplicas",
                lambda p: "minReplicas" not in p or "maxReplicas" not in p or p["minReplicas"] <= p["maxReplicas"])],
        },
        "rollout": {
            "type": "object",
            "properties": {
                "strategy": {"type": "string", "enum": STRATEGIES, "default": "replace"},
                "steps": {
                    "type": "array", "minItems": 1, "maxItems": 10, "default": [10, 50, 100],
                    "items": {"type": "integer", "minimum": 1, "maximum": 100},
                    "description": "Canary traffic percentages, strictly increasing, ending at 100.",
                    "x-kubernetes-validations": [
                        _rule("self.isSorted() && self.all(s, self.exists_one(t, t == s))",
                              "rollout.steps must be strictly increasing", _strictly_increasing_twin),
                        _rule("size(self) > 0 && self[size(self) - 1] == 100",
                              "rollout.steps must end at 100", lambda s: len(s) > 0 and s[-1] == 100),
                    ],
                },
                "interval": {"type": "string", "maxLength": 32, "pattern": DURATION_PATTERN,
                             "default": "60s",
                             "description": "Time between canary steps, a duration such as 60s or 5m."},
                "paused": {"type": "boolean", "default": False,
                           "description": "Hold a canary at its current weight (no analysis, no promotion)."},
                "promoteAlias": {
                    "type": "string", "minLength": 1, "maxLength": 255, "pattern": ALIAS_PATTERN,
                    "description": "MLflow alias moved to a version when it is promoted (e.g. production).",
                    "x-kubernetes-validations": [_not_latest_nor_version("promoteAlias")],
                },
                "allowInterfaceChange": {
                    "type": "boolean", "default": False,
                    "description": "Let a canary whose inputs or outputs changed incompatibly with the "
                                   "stable version's through (clients were changed first); "
                                   "clientErrorsVsStable still judges it."},
                "analysis": _analysis,
                "shadow": _shadow,
                "performanceGate": _performance_gate,
            },
        },
        "hooks": {
            "type": "object",
            "description": "Notification webhooks and gates of canary rollouts.",
            "properties": {
                "webhooks": {"type": "array", "maxItems": 16, "items": _webhook,
                             "x-kubernetes-validations": [_unique_names_rule]},
                "gates": {"type": "array", "maxItems": 16, "items": _gate,
                          "x-kubernetes-validations": [_unique_names_rule]},
            },
        },
    },
}

def node(path: str, root: dict | None = None) -> dict:
    """The schema node at a dotted spec path (`rollout.analysis.failureLimit`); list items are
    stepped through (`hooks.webhooks.events`)."""
    here = SPEC_SCHEMA if root is None else root
    for key in path.split("."):
        while here.get("type") == "array":
            here = here["items"]
        here = here["properties"][key]
    return here


def default(path: str) -> Any:
    """The default of the field at a dotted spec path (a fresh copy): the dataclasses in
    `modelops.deployment.spec` take theirs from here."""
    return copy.deepcopy(node(path)["default"])


__all__ = ["API_VERSION", "CEL_TWINS", "default", "node", "SPEC_SCHEMA"]
