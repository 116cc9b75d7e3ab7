"""Prometheus metrics of the predictor's request path (served at /metrics with KServe's).

Every series carries `model` (the served name) and `version` (the MLflow model version, from
`modelops serve --model-version`; empty when not given): canary analysis tells the stable and the
canary predictor apart by `version`. These names and labels are a public contract (README).
"""

from prometheus_client import Counter, Histogram

REQUESTS = Counter("modelops_predictor_requests_total", "Inference requests by outcome",
                   ["model", "version", "protocol", "code"])
LATENCY = Histogram("modelops_predictor_request_seconds", "Inference request latency",
                    ["model", "version", "protocol"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
BATCH_ROWS = Histogram("modelops_predictor_batch_rows", "Rows per onnxruntime call", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
AUTH_DENIED = Counter("modelops_predictor_auth_denied_total",
                      "Requests refused by --auth kubernetes, by reason "
                      "(missing_token, invalid_token, forbidden, unavailable)", ["reason"])
PADDING = Histogram("modelops_predictor_batch_padding_ratio",
                    "Sequence models: tokens per onnxruntime call over the requests' own tokens "
                    "(1 = no padding added by batching)", ["model"],
                    buckets=(1, 1.05, 1.1, 1.25, 1.5, 1.75, 2, 3, 4))
