"""The ModelDeployment's status schema: what the operator (and local mode's status document) writes.

Its enums are the spec schema's (`schema.PHASES`, `schema.ROLLOUT_PHASES`, ...): one definition each.
"""

from __future__ import annotations

from .schema import CHECK_OUTCOMES, GATE_TYPES, HOOK_EVENTS, PHASES, ROLLOUT_PHASES

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

_check_result = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "outcome": {"type": "string", "enum": CHECK_OUTCOMES},
        "value": {"type": "number"},
        "stable": {"type": "number", "description": "The stable version's value (checks against it)."},
        "message": {"type": "string"},
    },
}

_notification = {
    "type": "object",
    "description": "A rollout transition waiting to be delivered to every webhook subscribed to it.",
    "properties": {
        "seq": {"type": "integer"},
        "event": {"type": "string", "enum": HOOK_EVENTS},
        "version": {"type": "string"},
        "stableVersion": {"type": "string"},
        "weight": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "check": {"type": "string"},
    },
}

_load_test = {
    "type": "object",
    "description": "One load test's numbers (modelops loadtest).",
    "properties": {"requests": {"type": "number"}, "errors": {"type": "number"}, "throughputRps": {"type": "number"},
                   "p50Ms": {"type": "number"}, "p99Ms": {"type": "number"}},
}
_RECORD_OUTCOMES = ["Running", "Passed", "Failed", "Inconclusive"]

_journal_entry = {
    "type": "object",
    "description": "One counted analysis or performance-gate verdict (modelops.rollout.journal).",
    "properties": {
        "at": {"type": "string", "format": "date-time"},
        "phase": {"type": "string", "enum": ["performanceGate", "shadow", "step"]},
        "weight": {"type": "integer"},
        "step": {"type": "integer"},
        "attempt": {"type": "integer"},
        "outcome": {"type": "string", "enum": CHECK_OUTCOMES},
        "check": {"type": "string"},
        "values": {"type": "object", "additionalProperties": {"type": "number"},
                   "description": "What was measured: successRate, p99Ms, agreement, ...; the stable "
                                  "version's as stableSuccessRate, stableP99Ms, ... where measured."},
    },
}

_canary_status = {
    "type": "object",
    "description": "The canary rollout's persisted state (modelops.rollout.RolloutState).",
    "properties": {
        "phase": {"type": "string", "enum": ROLLOUT_PHASES},
        "version": {"type": "string", "description": "The canary's model version (none: no canary)."},
        "stableVersion": {"type": "string", "description": "The version serving the rest of the traffic."},
        "weight": {"type": "integer", "description": "Percent of traffic on the canary."},
        "step": {"type": "integer", "description": "Index into spec.rollout.steps."},
        "failedChecks": {"type": "integer", "description": "Failed analyses of this canary."},
        "inconclusiveChecks": {"type": "integer", "description": "Inconclusive analyses in a row."},
        "startedAt": {"type": "string", "format": "date-time"},
        "lastStepAt": {"type": "string", "format": "date-time"},
        "lastAnalysisAt": {"type": "string", "format": "date-time"},
        "nextAnalysisAt": {"type": "string", "format": "date-time"},
        "reason": {"type": "string", "description": "Why the rollout is where it is (CamelCase)."},
        "message": {"type": "string"},
        "analysis": {
            "type": "object",
            "description": "The last analysis: its outcome, the deciding check, every check.",
            "properties": {
                "version": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "outcome": {"type": "string", "enum": CHECK_OUTCOMES},
                "check": {"type": "string"},
                "message": {"type": "string"},
                "checks": {"type": "array", "items": _check_result},
            },
        },
        "gate": {
            "type": "object",
            "description": "The gate the rollout waits on.",
            "properties": {
                "type": {"type": "string", "enum": GATE_TYPES},
                "version": {"type": "string"},
                "askedAt": {"type": "string", "format": "date-time"},
                "open": {"type": "boolean"},
                "message": {"type": "string"},
            },
        },
        "rolledBack": {
            "type": "object",
            "description": "The last rolled-back version: not tried again until the spec or the "
                           "resolved version changes.",
            "properties": {
                "version": {"type": "string"},
                "generation": {"type": "integer", "format": "int64"},
                "at": {"type": "string", "format": "date-time"},
                "reason": {"type": "string"},
                "check": {"type": "string"},
            },
        },
        "hookSeq": {"type": "integer", "description": "Sequence number of the last notification."},
        "delivered": {"type": "object", "additionalProperties": {"type": "integer"},
                      "description": "Per webhook: the last notification it acknowledged."},
        "outbox": {"type": "array", "items": _notification},
        "performanceGate": {
            "type": "object",
            "description": "The canary's performance gate: its attempt, both load tests' numbers, the verdict.",
            "properties": {
                "version": {"type": "string"},
                "attempt": {"type": "integer"},
                "requestedAt": {"type": "string", "format": "date-time"},
                "outcome": {"type": "string", "enum": _RECORD_OUTCOMES},
                "check": {"type": "string"},
                "message": {"type": "string"},
                "stable": _load_test,
                "candidate": _load_test,
                "decidedAt": {"type": "string", "format": "date-time"},
            },
        },
        "shadow": {
            "type": "object",
            "description": "The canary's shadow phase: mirrored since, share, last comparison numbers, verdict.",
            "properties": {
                "version": {"type": "string"},
                "startedAt": {"type": "string", "format": "date-time"},
                "percent": {"type": "integer"},
                "outcome": {"type": "string", "enum": _RECORD_OUTCOMES},
                "check": {"type": "string"},
                "message": {"type": "string"},
                "values": {"type": "object", "properties": {
                    "comparisons": {"type": "number"}, "agreement": {"type": "number"},
                    "maxAbsDiff": {"type": "number"}, "worstAbsDiff": {"type": "number"},
                    "cosine": {"type": "number"}}},
                "decidedAt": {"type": "string", "format": "date-time"},
            },
        },
        "journal": {"type": "array", "items": _journal_entry,
                    "description": "The canary's counted analyses and performance-gate verdicts, oldest first "
                                   "(the last 50): the rollout report logged to MLflow when it ends."},
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
        "canaryModel": {**_served, "description": "The converted model of the canary in progress."},
        "canary": _canary_status,
        "failed": {
            "type": "object",
            "description": "The last version+options that failed permanently: not retried until the spec or the alias changes.",
            "properties": {"version": {"type": "string"}, "options": {"type": "string"},
                           "reason": {"type": "string"}, "message": {"type": "string"}},
        },
        "url": {"type": "string"},
    },
}

__all__ = ["STATUS_SCHEMA"]
