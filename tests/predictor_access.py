"""Helpers of the predictor access-control tests (auth, audit, TLS): a `modelops serve` child
process, a tiny ONNX model, and `KubeAuth`, real ServiceAccounts, tokens and RBAC on the real
control plane (../shared/k8s) for the predictor's TokenReview and SubjectAccessReview.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml

from modelops.local.ports import free_port
from modelops.local.processes import stop as stop_process

MODELOPS = str(Path(sys.executable).parent / "modelops")
AUDIENCE = "modelops.dev/predict"


def relu_model(out_dir: Path) -> Path:
    """y = relu(x), x FP32 [-1, 4]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    return out_dir


RELU_REQUEST = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1, 2, -3, 4]}]}


class Serve:
    """`modelops serve` in its own process group on loopback, killed by stop()."""

    def __init__(self, model_dir: Path, name: str, log_dir: Path, *args: str, scheme: str = "http",
                 verify=True, wait: str = "/v2/health/live"):
        self.name = name
        self.http_port, self.grpc_port = free_port(), free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_dir / f"serve-{name}-{self.http_port}.log"
        cmd = [MODELOPS, "serve", str(model_dir), "--name", name, "--host", "127.0.0.1",
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if isinstance(verify, str):
            import ssl

            verify = ssl.create_default_context(cafile=verify)
        self.http = httpx.Client(base_url=self.url, timeout=30, verify=verify)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelops serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http.get(wait, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"modelops serve not up after 120s:\n{self.log()}")
            time.sleep(0.2)

    def infer(self, token: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.post(f"/v2/models/{self.name}/infer", json=RELU_REQUEST, headers=headers, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit_lines(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{") and '"audit":"predictor"' in line:
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        self.http.close()
        stop_process(self.proc)


def grpc_infer(target: str, name: str, token: str | None = None, credentials=None):
    """One ModelInfer of RELU_REQUEST over gRPC: (StatusCode, details)."""
    import grpc
    import numpy as np
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    request = pb.ModelInferRequest(model_name=name, inputs=[tensor],
                                   raw_input_contents=[np.array([-1, 2, -3, 4], np.float32).tobytes()])
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            reply = stub.ModelInfer(request, metadata=metadata, timeout=20)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, np.frombuffer(reply.raw_output_contents[0], np.float32).tolist()


class KubeAuth:
    """A namespace with the predictor's ServiceAccount (bound to system:auth-delegator, as the
    operator binds it), a `caller` allowed to `get modeldeployments/predict` on DEPLOYMENT, and an
    `other` ServiceAccount with no such right."""

    def __init__(self, cp, work: Path, deployment: str):
        self.cp, self.work, self.deployment = cp, work, deployment
        self.ns = f"auth-{uuid.uuid4().hex[:6]}"
        self.crb = f"modelops-test-{self.ns}"
        kc = yaml.safe_load(Path(cp.kubeconfig).read_text())
        cluster = kc["clusters"][0]["cluster"]
        self.api_url = cluster["server"]
        self.ca_file = work / "ca.crt"
        self.ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        for sa in ("predictor", "caller", "other"):
            self.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": self.ns}})
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": self.crb},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "system:auth-delegator"},
                    "subjects": [{"kind": "ServiceAccount", "name": "predictor", "namespace": self.ns}]})
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "predict", "namespace": self.ns},
                    "rules": [{"apiGroups": ["modelops.dev"], "resources": ["modeldeployments/predict"],
                               "resourceNames": [deployment], "verbs": ["get"]}]})
        self.bind_caller()
        self.token_file = work / "predictor.token"
        self.token_file.write_text(self.token("predictor"))

    def apply(self, obj: dict) -> None:
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def bind_caller(self) -> None:
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "caller-predict", "namespace": self.ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "predict"},
                    "subjects": [{"kind": "ServiceAccount", "name": "caller", "namespace": self.ns}]})

    def unbind_caller(self) -> None:
        self.cp.kubectl("-n", self.ns, "delete", "rolebinding", "caller-predict")

    def token(self, sa: str, audience: str | None = None) -> str:
        args = ["-n", self.ns, "create", "token", sa, "--duration", "1h"]
        if audience:
            args += ["--audience", audience]
        return self.cp.kubectl(*args).stdout.strip()

    def expired_token(self, sa: str, audience: str = AUDIENCE, expires_in: int = -3600) -> str:
        """A token as TokenRequest makes them, but expired an hour ago (TokenRequest will not issue
        one shorter than 10 minutes): its claims re-signed with the control plane's service-account
        key. `expires_in` > 0 gives the same token still valid (the control for the test)."""
        import jwt

        token = self.token(sa, audience)
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        now = int(time.time())
        claims.update(iat=now - 7200, nbf=now - 7200, exp=now + expires_in)
        key = (self.cp.state_dir / "pki" / "sa.key").read_bytes()
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": header.get("kid")})

    def serve_args(self, *, api_url: str | None = None, ttl: float = 2.0) -> list[str]:
        return ["--auth", "kubernetes", "--auth-namespace", self.ns, "--auth-deployment", self.deployment,
                "--auth-audience", AUDIENCE, "--kube-api-url", api_url or self.api_url,
                "--kube-token-file", str(self.token_file), "--kube-ca-file", str(self.ca_file),
                "--auth-cache-ttl", str(ttl), "--auth-negative-ttl", "1"]

    def close(self) -> None:
        self.cp.kubectl("delete", "clusterrolebinding", self.crb, "--ignore-not-found", check=False)
        self.cp.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)
