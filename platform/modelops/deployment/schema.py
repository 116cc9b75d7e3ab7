"""The ModelDeployment CRD: the one source of truth for its schema.

`scripts/gen_crd.py` writes `crd()` to `manifests/crds/` and `helm/modelops/crds/`; a test checks
both files equal it. `modelops.deployment.spec` re-checks the same rules in Python for objects
that never went through an API server (local runs, the kmock emulator).

Compatibility: the CRD must install on Kubernetes 1.25+ (CEL validation on by default). So the
`x-kubernetes-validations` rules use only `rule` and `message` (`fieldPath`, `reason` and
`messageExpression` came later), only CEL functions 1.25 has (`isSorted()` from the list library,
the standard macros), a ternary instead of comparing two `has()` results with `!=` (which old
cost estimators reject), and `maxItems`/`maxLength` on everything a rule iterates or matches so
the estimated cost stays inside the API server's budget.
"""

from __future__ import annotations

import copy

from . import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

PRECISIONS = ["fp32", "fp16", "int8"]
STRATEGIES = ["canary", "replace"]
PHASES = ["Pending", "Converting", "Deploying", "Progressing", "Ready", "RolledBack", "Failed"]
CONDITION_TYPES = ["Ready", "Reconciling", "Stalled", "Converted"]

# A Go duration as `time.ParseDuration` reads it, restricted to the units that make sense here.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# Kubernetes resource.Quantity (the API server's own regex, simplified to its accepted forms).
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
MODEL_NAME_MAX = 256
ALIAS_PATTERN = r"^[A-Za-z0-9_\-]+$"

_quantity_map = {
    "type": "object",
    "maxProperties": 16,
    "additionalProperties": {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "pattern": QUANTITY_PATTERN,
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
                "version": {"type": "string", "pattern": r"^[1-9][0-9]{0,8}$", "maxLength": 9,
                            "description": "Pinned model version (quote it: \"3\")."},
                "alias": {
                    "type": "string", "minLength": 1, "maxLength": 255, "pattern": ALIAS_PATTERN,
                    "description": "Registered-model alias to follow (e.g. champion).",
                    "x-kubernetes-validations": [{
                        "rule": "self != 'latest' && !self.matches('^[vV][0-9]+$')",
                        "message": "alias must not be 'latest' nor look like a version (v3)",
                    }],
                },
            },
            "x-kubernetes-validations": [{
                # A ternary, not `has(self.version) != has(self.alias)`: 1.25's cost estimator
                # rejects comparing two has() results.
                "rule": "has(self.version) ? !has(self.alias) : has(self.alias)",
                "message": "exactly one of model.version or model.alias must be set",
            }],
        },
        "registry": {
            "type": "object",
            "properties": {
                "trackingUri": {"type": "string", "maxLength": 2048, "pattern": r"^https?://.+",
                                "description": "MLflow tracking server; the operator's default otherwise."},
                "credentialsSecret": {
                    "type": "string", "maxLength": 253,
                    "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
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
            },
            "x-kubernetes-validations": [{
                "rule": "!has(self.minReplicas) || !has(self.maxReplicas) "
                        "|| self.minReplicas <= self.maxReplicas",
                "message": "predictor.minReplicas must not exceed predictor.maxReplicas",
            }],
        },
        "rollout": {
            "type": "object",
            "properties": {
                "strategy": {"type": "string", "enum": STRATEGIES, "default": "replace"},
                "steps": {
                    "type": "array", "minItems": 1, "maxItems": 10,
                    "items": {"type": "integer", "minimum": 1, "maximum": 100},
                    "description": "Canary traffic percentages, strictly increasing, ending at 100.",
                    "x-kubernetes-validations": [
                        {"rule": "self.isSorted() && self.all(s, self.exists_one(t, t == s))",
                         "message": "rollout.steps must be strictly increasing"},
                        {"rule": "size(self) > 0 && self[size(self) - 1] == 100",
                         "message": "rollout.steps must end at 100"},
                    ],
                },
                "interval": {"type": "string", "maxLength": 32, "pattern": DURATION_PATTERN,
                             "default": "60s",
                             "description": "Time between canary steps, a duration such as 60s or 5m."},
            },
        },
    },
}

_condition = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string", "maxLength": 64},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string", "maxLength": 128},
        "message": {"type": "string", "maxLength": 4096},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer", "format": "int64"},
    },
}

_served = {
    "type": "object",
    "properties": {
        "version": {"type": "string"},
        "onnxUri": {"type": "string"},
        "storageUri": {"type": "string"},
        "sha256": {"type": "string"},
        "options": {"type": "string", "description": "Conversion options fingerprint."},
    },
}

STATUS_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "enum": PHASES},
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {
            "type": "array", "items": _condition,
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        },
        "resolvedVersion": {"type": "string", "description": "What the model reference resolved to last."},
        "stable": _served,
        "canary": {"type": "object", "properties": {
            "version": {"type": "string"}, "weight": {"type": "integer"}}},
        "failed": {
            "type": "object",
            "description": "The last version+options that failed permanently: not retried until the spec or the alias changes.",
            "properties": {"version": {"type": "string"}, "options": {"type": "string"},
                           "reason": {"type": "string"}, "message": {"type": "string"}},
        },
        "url": {"type": "string"},
    },
}

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Version", "type": "string", "jsonPath": ".status.stable.version"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Canary %", "type": "integer", "jsonPath": ".status.canary.weight"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def open_api_schema() -> dict:
    """The `openAPIV3Schema` of the served version."""
    return {
        "type": "object",
        "description": "Serve an MLflow model as validated ONNX on KServe (GPU or CPU).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": copy.deepcopy(SPEC_SCHEMA),
            "status": copy.deepcopy(STATUS_SCHEMA),
        },
    }


def crd() -> dict:
    """The complete CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "modelops", "app.kubernetes.io/part-of": "modelops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": SINGULAR, "shortNames": list(SHORT_NAMES),
                      "categories": ["modelops"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                "schema": {"openAPIV3Schema": open_api_schema()},
            }],
        },
    }


__all__ = ["API_VERSION", "crd", "open_api_schema", "SPEC_SCHEMA", "STATUS_SCHEMA"]
