"""Prometheus metrics of the predictor's request path (served at /metrics with KServe's).

Every series carries `model` (the served name) and `version` (the MLflow model version, from
`modelops serve --model-version`; empty when not given): canary analysis tells the stable and the
canary predictor apart by `version`. These names and labels are a public contract (README).
"""

from functools import lru_cache

from prometheus_client import Counter, Histogram

REQUESTS = Counter("modelops_predictor_requests_total", "Inference requests by outcome",
                   ["model", "version", "protocol", "code"])
LATENCY = Histogram("modelops_predictor_request_seconds", "Inference request latency",
                    ["model", "version", "protocol"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


@lru_cache(maxsize=1024)
def answered(model: str, version: str, protocol: str):
    """(REQUESTS child with code 200, LATENCY child) of one label set: bound once, since
    `labels()` takes a lock and builds a key on every call (no series here is ever removed)."""
    return REQUESTS.labels(model, version, protocol, "200"), LATENCY.labels(model, version, protocol)


BATCH_ROWS = Histogram("modelops_predictor_batch_rows", "Rows per onnxruntime call", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
AUTH_DENIED = Counter("modelops_predictor_auth_denied_total",
                      "Requests refused by --auth kubernetes, by reason "
                      "(missing_token, invalid_token, forbidden, unavailable)", ["reason"])
PADDING = Histogram("modelops_predictor_batch_padding_ratio",
                    "Sequence models: tokens per onnxruntime call over the requests' own tokens "
                    "(1 = no padding added by batching)", ["model"],
                    buckets=(1, 1.05, 1.1, 1.25, 1.5, 1.75, 2, 3, 4))

# Shadow mirroring (`shadow`): the stable predictor's copies of sampled requests to a candidate,
# and the comparison of the two answers (`compare`). `version` is the stable's, `candidate` the
# candidate's version (from the mirror configuration).
_SHADOW = ["model", "version", "candidate"]
_DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1, 5, 10, 100)
SHADOW_MIRRORED = Counter("modelops_shadow_mirrored_total",
                          "Sampled requests copied to the candidate, by result (sent: the candidate "
                          "answered 200; dropped: the mirror queue was full; failed: unreachable, "
                          "timeout or non-200)", [*_SHADOW, "result"])
SHADOW_COMPARISONS = Counter("modelops_shadow_comparisons_total",
                             "Mirrored requests whose candidate answer agrees with the stable's, by outcome "
                             "(agree|disagree)", [*_SHADOW, "outcome"])
SHADOW_ABS_DIFF = Histogram("modelops_shadow_abs_diff",
                            "Max |stable - candidate| over the numeric outputs of one mirrored request",
                            _SHADOW, buckets=_DIFF_BUCKETS)
SHADOW_REL_DIFF = Histogram("modelops_shadow_rel_diff",
                            "Max relative difference over the numeric outputs of one mirrored request",
                            _SHADOW, buckets=_DIFF_BUCKETS)
SHADOW_COSINE = Histogram("modelops_shadow_cosine",
                          "Min cosine similarity over the rows of the vector outputs of one mirrored request",
                          _SHADOW, buckets=(0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1))
