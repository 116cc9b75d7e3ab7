"""The predictor's access layer without a cluster: bearer-token parsing, the audit line's sampling
and rate limit, the flags, and `--audit on` with auth off (REST and gRPC). The TokenReview /
SubjectAccessReview path is tested against the real API server in
tests/cluster/test_cluster_predictor_auth.py."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from modelops.errors import Unauthenticated
from modelops.serving import auth, options
from modelops.serving.audit import AuditLog
from predictor_access import MODELOPS, Serve, grpc_infer, relu_model


def test_bearer_token_parsing():
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("bearer   abc ") == "abc"
    for header, message in ((None, "missing bearer token"), ("", "missing bearer token"),
                            ("Basic dXNlcg==", "not a bearer token"), ("Bearer", "not a bearer token"),
                            ("Bearer " + "x" * (auth.MAX_TOKEN_BYTES + 1), "too long")):
        with pytest.raises(Unauthenticated, match=message):
            auth.bearer_token(header)


def test_flag_defaults_match_the_auth_module():
    # options.py keeps literals so that building the CLI parser imports neither httpx nor grpc.
    assert (options.SA_DIR, options.DEFAULT_AUDIENCE) == (auth.SA_DIR, auth.DEFAULT_AUDIENCE)


def test_tls_flags_go_together(tmp_path):
    r = subprocess.run([MODELOPS, "serve", str(tmp_path), "--name", "m", "--tls-cert", "c.pem"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--tls-cert and --tls-key go together" in r.stderr


@pytest.fixture
def audit_lines():
    return []


def _sink(lines: list):
    def write(line: bytes):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        lines.append(json.loads(line))
    return write


def _record(log: AuditLog, reason: str = ""):
    log.record(caller="u", model="m", version="1", protocol="rest", route="POST /v2/models/m/infer",
               status=403 if reason else 200, latency_s=0.001, reason=reason)


def test_audit_sampling_keeps_every_refusal(audit_lines):
    draws = iter([0.1, 0.9, 0.1, 0.9] * 3)
    log = AuditLog(sample=0.5, rng=lambda: next(draws), sink=_sink(audit_lines))
    for _ in range(4):
        _record(log)
    assert len(audit_lines) == 2  # 0.9 >= 0.5 sampled out
    for _ in range(3):
        _record(log, reason="forbidden")
    assert len(audit_lines) == 5 and all(ln["reason"] == "forbidden" for ln in audit_lines[2:])


def test_audit_rate_limit_counts_what_it_suppressed(audit_lines):
    now = [0.0]
    log = AuditLog(max_per_second=2, clock=lambda: now[0], sink=_sink(audit_lines))
    for _ in range(5):  # a burst of 5: the bucket holds 2
        _record(log)
    assert len(audit_lines) == 2 and "suppressed" not in audit_lines[-1]
    now[0] = 1.0  # refilled
    _record(log)
    assert audit_lines[-1]["suppressed"] == 3
    _record(log)
    assert "suppressed" not in audit_lines[-1]
    with pytest.raises(ValueError, match="--audit-sample"):
        AuditLog(sample=1.5)


@pytest.mark.slow
def test_audit_without_auth_over_rest_and_grpc(tmp_path):
    srv = Serve(relu_model(tmp_path / "m"), "relu", tmp_path, "--audit", "on", "--model-version", "2")
    try:
        assert srv.infer().status_code == 200
        assert srv.http.get("/v2/models/nope").status_code == 404
        assert grpc_infer(srv.grpc_target, "relu")[0] == grpc.StatusCode.OK
        srv.http.get("/metrics")
        srv.http.get("/v2/health/ready")
        lines = srv.audit_lines()
        assert [(ln["protocol"], ln["status"], ln["model"]) for ln in lines] == [
            ("rest", 200, "relu"), ("rest", 404, "nope"), ("grpc", "OK", "relu")]
        assert all(ln["caller"] == "-" for ln in lines) and lines[0]["version"] == "2"
        assert "modelops_predictor_auth_denied_total" in srv.http.get("/metrics").text
    finally:
        srv.stop()
