"""The ModelDeployment CustomResourceDefinition: the spec schema and the status schema in one
object, with the printer columns (`scripts/gen_crd.py` writes it out)."""

from __future__ import annotations

import copy

from . import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .schema import SPEC_SCHEMA
from .status_schema import STATUS_SCHEMA

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Version", "type": "string", "jsonPath": ".status.stable.version"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canary.version"},
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


__all__ = ["PRINTER_COLUMNS", "crd", "open_api_schema"]
