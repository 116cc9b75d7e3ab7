"""The schema's nodes for judging a model before traffic: `spec.rollout.shadow` and
`spec.rollout.performanceGate` (part of the one schema in `schema.py`, which places them;
the duration pattern is the schema's, passed in)."""

from __future__ import annotations


def shadow_node(duration_pattern: str) -> dict:
    """`spec.rollout.shadow`."""
    return {
        "type": "object",
        "description": "A shadow phase before the first traffic step: the stable predictor mirrors `percent` of "
                       "its requests to the candidate (clients only get the stable's answers) and compares the "
                       "answers; the checks judge them. Absent: no shadow phase. The comparison goes on during "
                       "the canary steps (a step fails on disagreement too).",
        "properties": {
            "percent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10,
                        "description": "Share of the stable version's requests copied to the candidate."},
            "minRequests": {"type": "integer", "minimum": 1, "maximum": 1000000000, "default": 50,
                            "description": "Compared requests needed before the shadow checks can pass; fewer "
                                           "is inconclusive (in a canary step: not judged)."},
            "maxDuration": {"type": "string", "maxLength": 32, "pattern": duration_pattern, "default": "10m",
                            "description": "Longest shadow phase: still too few comparisons by then rolls the "
                                           "candidate back (inconclusive), never into traffic."},
            "checks": {
                "type": "object",
                "properties": {
                    "agreement": {
                        "type": "object",
                        "description": "agree / (agree + disagree) of the compared requests (top class for "
                                       "classifier outputs, else every output allclose).",
                        "properties": {"min": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.99,
                                               "description": "At least this share (default 0.99; 0 turns it off)."}},
                    },
                    "maxAbsDiff": {
                        "type": "object",
                        "description": "max |stable - candidate| of a request, at a quantile over the requests.",
                        "properties": {
                            "quantile": {"type": "number", "minimum": 0.5, "maximum": 1, "default": 0.99},
                            "max": {"type": "number", "minimum": 0,
                                    "description": "At most this (unset: reported, not judged)."},
                        },
                    },
                    "cosine": {
                        "type": "object",
                        "description": "Min cosine similarity of a request's vector outputs (embeddings), at the "
                                       "low quantile 1 - maxAbsDiff.quantile (default 0.01). Absent: off.",
                        "properties": {"min": {"type": "number", "minimum": -1, "maximum": 1, "default": 0.99}},
                    },
                },
            },
        },
    }


def performance_gate_node(duration_pattern: str) -> dict:
    """`spec.rollout.performanceGate`."""
    return {
        "type": "object",
        "description": "A load test of the candidate alone before shadow or traffic, against a budget and "
                       "against the same test of the stable version just before. Absent: no gate.",
        "properties": {
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 4,
                            "description": "Requests in flight."},
            "duration": {"type": "string", "maxLength": 32, "pattern": duration_pattern, "default": "20s",
                         "description": "How long each of the two tests runs."},
            "maxP99Ms": {"type": "number", "minimum": 0,
                         "description": "The candidate's p99 ceiling in ms (unset: none)."},
            "minThroughputRatio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8,
                                   "description": "The candidate's throughput at least this multiple of the stable's "
                                                  "(0 turns the check off)."},
        },
    }
