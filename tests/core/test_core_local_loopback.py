"""`modelops local up` on a shared workstation: nothing it starts listens beyond loopback, and the
router can require a static bearer token (HTTP, gRPC and its admin API).

One run, everything real: `local up` starts its embedded MLflow (the model is registered into it
once it is up), converts, starts the predictor (HTTP + gRPC) and the router (HTTP, gRPC, admin).
Every listening socket of every process in the process groups it recorded is then inspected.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid

import grpc
import httpx
import psutil
import pytest
import yaml

from modelops.local.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
TOKEN = "local-" + uuid.uuid4().hex


def _supervisor(state) -> dict:
    try:
        return json.loads((state / "supervisor.json").read_text())
    except (OSError, ValueError):
        return {}


def _status(state) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(proc, log, what, check, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"local up exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}")
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # gRPC binds 127.0.0.1 as ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def listening(pgids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of the processes in these groups."""
    out = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if os.getpgid(p.pid) not in pgids:
                continue
            for c in p.connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((p.info["name"], c.laddr.ip, c.laddr.port))
        except (psutil.Error, ProcessLookupError):
            continue
    return out


def test_local_up_listens_on_loopback_only_and_the_router_wants_its_token(tmp_path):
    from mlflow.tracking import MlflowClient

    from modelops.demo.models import register_torch_mlp

    model = f"loopback-{uuid.uuid4().hex[:6]}"
    file = tmp_path / "md.yaml"
    file.write_text(yaml.safe_dump({"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
                                    "metadata": {"name": "sec"},
                                    "spec": {"model": {"name": model, "alias": "champion"}}}))
    (tmp_path / "token").write_text(TOKEN + "\n")
    state, log = tmp_path / "state", tmp_path / "up.log"
    grpc_port = free_port()
    cmd = [sys.executable, "-m", "modelops.cli", "local", "up", "-f", str(file), "--state-dir", str(state),
           "--port", "0", "--grpc-port", str(grpc_port), "--progress", "lines", "--resolve-interval", "0.5",
           "--token-file", str(tmp_path / "token")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rec = _wait(proc, log, "the embedded MLflow", lambda: (_supervisor(state).get("children") or {}).get("mlflow"))
        tracking = f"http://127.0.0.1:{rec['port']}"
        version = register_torch_mlp(tracking, model, seed=0)
        MlflowClient(tracking_uri=tracking, registry_uri=tracking).set_registered_model_alias(model, "champion", version)
        status = _wait(proc, log, "v1 serving", lambda: (s := _status(state)).get("phase") == "Ready" and s)

        sup = _supervisor(state)
        roles = set(sup["children"])
        assert {"mlflow", "router", f"predictor-v{version}"} <= roles, roles
        pgids = {sup["pgid"], *(c["pgid"] for c in sup["children"].values())}
        sockets = listening(pgids)
        ports = {port for _, _, port in sockets}
        predictor = sup["children"][f"predictor-v{version}"]
        router = sup["children"]["router"]
        # Every listener we know of was found (so the check below is not vacuous) ...
        assert {rec["port"], router["port"], router["adminPort"], grpc_port, predictor["port"]} <= ports, sockets
        assert len(ports) >= 6, sockets  # + the predictor's gRPC port
        # ... and none of them is reachable from another machine.
        assert all(loopback(ip) for _, ip, _ in sockets), sockets

        # The router's token: HTTP data plane, gRPC and the admin API; probes and /healthz open.
        url = status["url"]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.1] * 16}]}
        with httpx.Client(timeout=30) as http:
            r = http.post(f"{url}/v2/models/sec/infer", json=body)
            assert r.status_code == 401 and r.json()["reason"] == "Unauthenticated"
            assert r.json()["error"] == "missing bearer token (Authorization: Bearer <token>)"
            r = http.post(f"{url}/v2/models/sec/infer", json=body, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401 and r.json()["error"] == "invalid bearer token"
            r = http.post(f"{url}/v2/models/sec/infer", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text
            assert http.get(f"{url}/v2/health/ready").status_code == 200
            admin = f"http://127.0.0.1:{router['adminPort']}"
            assert http.get(f"{admin}/routes").status_code == 401
            assert http.put(f"{admin}/routes", json={"routes": []}).status_code == 401
            assert http.get(f"{admin}/routes", headers={"Authorization": f"Bearer {TOKEN}"}).json()["routes"]
            assert http.get(f"{admin}/healthz").status_code == 200
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="sec"), timeout=20)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="sec"), timeout=20,
                                      metadata=[("authorization", f"Bearer {TOKEN}")])
            assert meta.name == "sec" and meta.versions == [version]
        assert TOKEN not in log.read_text()
    finally:
        subprocess.run([sys.executable, "-m", "modelops.cli", "local", "down", "--state-dir", str(state)],
                       capture_output=True, timeout=120)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("host,expected", [(None, {"0.0.0.0", "::"}), ("127.0.0.1", {"127.0.0.1"})])
def test_serve_listens_everywhere_in_a_container_and_where_told(tmp_path, host, expected):
    from predictor_access import relu_model

    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "modelops.cli", "serve", str(relu_model(tmp_path / "m")), "--name", "relu",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port), *(["--host", host] if host else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            found = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(proc.pid).connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
            if {p for _, p in found} >= {http_port, grpc_port}:
                break
            assert proc.poll() is None and time.monotonic() < deadline, found
            time.sleep(0.2)
        assert {str(ipaddress.ip_address(ip).ipv4_mapped or ip) if ":" in ip else ip for ip, _ in found} <= expected, found
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
