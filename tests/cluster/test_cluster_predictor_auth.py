"""`modelops serve --auth kubernetes` against the real API server: tokens made by `kubectl create
token`, checked by a real TokenReview, authorised by a real SubjectAccessReview against real RBAC.

One predictor process for the module (cache bound 2 s, negative 1 s); REST and gRPC alike.
"""

from __future__ import annotations

import time

import grpc
import pytest

from modelops.local.ports import free_port
from predictor_access import AUDIENCE, KubeAuth, Serve, grpc_infer, relu_model

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
NAME = "scorer"
TTL = 2.0


@pytest.fixture(scope="module")
def kube(control_plane, tmp_path_factory):
    auth = KubeAuth(control_plane, tmp_path_factory.mktemp("kube-auth"), NAME)
    yield auth
    auth.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return relu_model(tmp_path_factory.mktemp("relu"))


@pytest.fixture(scope="module")
def server(kube, model_dir, tmp_path_factory):
    srv = Serve(model_dir, NAME, tmp_path_factory.mktemp("logs"), "--model-version", "7",
                *kube.serve_args(ttl=TTL))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tokens(kube):
    return {"caller": kube.token("caller", AUDIENCE), "other": kube.token("other", AUDIENCE),
            "wrong_audience": kube.token("caller"),  # the API server's own audience
            "expired": kube.expired_token("caller"), "garbage": "not.a.token",
            "resigned": kube.expired_token("caller", expires_in=3600)}


def denied_count(server, reason: str) -> float:
    for line in server.http.get("/metrics").text.splitlines():
        if line.startswith(f'modelops_predictor_auth_denied_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_rest_allows_the_bound_caller_and_refuses_everyone_else(kube, server, tokens):
    ok = server.infer(tokens["caller"])
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == [0, 2, 0, 4]
    # The expired token below differs from this one only in its times: so it is refused for expiry.
    assert server.infer(tokens["resigned"]).status_code == 200
    before = {r: denied_count(server, r) for r in ("missing_token", "invalid_token", "forbidden")}

    r = server.infer(tokens["other"])
    assert r.status_code == 403 and r.json()["reason"] == "Forbidden"
    assert r.json()["error"] == (f"system:serviceaccount:{kube.ns}:other may not get "
                                 f"modeldeployments/predict '{NAME}' in namespace '{kube.ns}'")
    r = server.infer(None)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json() == {"error": "missing bearer token (Authorization: Bearer <token>)",
                        "reason": "Unauthenticated"}
    for kind in ("wrong_audience", "expired", "garbage"):
        r = server.infer(tokens[kind])
        assert r.status_code == 401, (kind, r.text)
        assert tokens[kind] not in r.text and r.json()["reason"] == "Unauthenticated"
    r = server.http.post(f"/v2/models/{NAME}/infer", json={}, headers={"Authorization": "Basic dXNlcg=="})
    assert r.status_code == 401 and "not a bearer token" in r.json()["error"]

    # Every route is closed but the probes and the scrape: metadata, model ready, v1, docs.
    for path in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/ready", "/v2", "/docs", "/v1/models"):
        assert server.http.get(path).status_code == 401, path
    assert server.http.post(f"/v1/models/{NAME}:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 401
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert server.http.get(path).status_code == 200, path
    assert server.http.get(f"/v2/models/{NAME}", headers={"Authorization": f"Bearer {tokens['caller']}"}
                           ).json()["versions"] == ["7"]

    after = {r: denied_count(server, r) for r in before}
    assert after["forbidden"] - before["forbidden"] == 1
    assert after["missing_token"] - before["missing_token"] >= 7  # the no-token request + 6 routes
    assert after["invalid_token"] - before["invalid_token"] == 4  # 3 tokens + the Basic header


def test_grpc_allows_the_bound_caller_and_refuses_everyone_else(server, tokens):
    assert grpc_infer(server.grpc_target, NAME, tokens["caller"]) == (grpc.StatusCode.OK, [0, 2, 0, 4])
    code, details = grpc_infer(server.grpc_target, NAME, tokens["other"])
    assert code == grpc.StatusCode.PERMISSION_DENIED and "may not get modeldeployments/predict" in details
    assert grpc_infer(server.grpc_target, NAME, None)[0] == grpc.StatusCode.UNAUTHENTICATED
    for kind in ("wrong_audience", "expired", "garbage"):
        assert grpc_infer(server.grpc_target, NAME, tokens[kind])[0] == grpc.StatusCode.UNAUTHENTICATED, kind
    # The probes stay open over gRPC too.
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=NAME), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_removing_the_rolebinding_refuses_within_the_cache_bound(kube, server, tokens):
    assert server.infer(tokens["caller"]).status_code == 200  # cached as allowed now
    kube.unbind_caller()
    removed = time.monotonic()
    try:
        while True:
            status = server.infer(tokens["caller"]).status_code
            waited = time.monotonic() - removed
            if status == 403:
                break
            assert status == 200
            assert waited < TTL + 3, f"still allowed {waited:.1f}s after the RoleBinding went (cache {TTL}s)"
            time.sleep(0.1)
        assert grpc_infer(server.grpc_target, NAME, tokens["caller"])[0] == grpc.StatusCode.PERMISSION_DENIED
    finally:
        kube.bind_caller()
    deadline = time.monotonic() + 10
    while server.infer(tokens["caller"]).status_code != 200:  # and back, once the refusal expires
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_an_unreachable_api_server_fails_closed(kube, model_dir, tokens, tmp_path):
    dead = f"https://127.0.0.1:{free_port()}"  # nothing listens there: as if the API server were down
    srv = Serve(model_dir, NAME, tmp_path, *kube.serve_args(api_url=dead))
    try:
        r = srv.infer(tokens["caller"])
        assert r.status_code == 503 and r.json()["reason"] == "AuthUnavailable", r.text
        assert r.json()["error"] == "the Kubernetes API server did not answer (ConnectError)"
        assert grpc_infer(srv.grpc_target, NAME, tokens["caller"])[0] == grpc.StatusCode.UNAVAILABLE
        assert srv.infer(tokens["caller"]).status_code == 503  # not cached as allowed, never 200
        assert denied_count(srv, "unavailable") == 3
        assert srv.http.get("/v2/health/ready").status_code == 200  # the probe does not depend on it
    finally:
        srv.stop()


def test_the_audit_line_of_each_request(kube, server, tokens):
    server.infer(tokens["caller"])
    server.infer(tokens["other"])
    grpc_infer(server.grpc_target, NAME, tokens["caller"])
    time.sleep(0.3)
    lines = server.audit_lines()
    caller = f"system:serviceaccount:{kube.ns}:caller"
    rest_ok = [ln for ln in lines if ln["caller"] == caller and ln["protocol"] == "rest" and ln["status"] == 200]
    assert rest_ok, lines[-5:]
    line = rest_ok[-1]
    assert set(line) == {"time", "audit", "caller", "model", "version", "protocol", "route", "status",
                         "latency_ms"}
    assert (line["model"], line["version"], line["route"]) == (NAME, "7", f"POST /v2/models/{NAME}/infer")
    assert line["latency_ms"] > 0 and line["time"].endswith("Z")
    refused = [ln for ln in lines if ln.get("reason") == "forbidden"]
    assert refused and refused[-1]["caller"] == f"system:serviceaccount:{kube.ns}:other"
    assert refused[-1]["status"] == 403
    grpc_ok = [ln for ln in lines if ln["protocol"] == "grpc" and ln["status"] == "OK" and ln["caller"] == caller]
    assert grpc_ok and grpc_ok[-1]["route"] == "/inference.GRPCInferenceService/ModelInfer"
    assert grpc_ok[-1]["model"] == NAME and grpc_ok[-1]["version"] == "7"
    assert any(ln.get("reason") == "missing_token" and ln["caller"] == "-" for ln in lines)
    # Never the payload, never a token.
    text = server.log()
    assert "[-1, 2, -3, 4]" not in text and "-1.0, 2.0, -3.0" not in text
    # each audit line holds only these fields (a random namespace may well contain "-3")
    fields = {"time", "audit", "caller", "model", "version", "protocol", "route", "status", "latency_ms", "reason", "suppressed"}
    assert all(set(ln) <= fields for ln in lines), [sorted(set(ln) - fields) for ln in lines]
    assert all(t not in text for t in tokens.values())
