"""The operator's Kubernetes credentials come from the official client's kubeconfig loader:
an `exec` credential plugin whose token changes is re-run when its token expires, and the
operator's requests carry the new token (EKS/GKE/AKS/OIDC tokens expire after minutes)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from modelops_operator.kube import ApiError, Kube, load_configuration

PLUGIN = r'''
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
# Expires in 10 s: inside the client's 5-minute refresh margin, so each request refreshes it.
expiry = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=10))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": f"token-{n}",
                             "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
'''


@pytest.fixture
def recording_server():
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            ok = (self.headers.get("Authorization") or "").startswith("Bearer token-")
            body = json.dumps({"kind": "Namespace", "metadata": {"name": "x"}} if ok else
                              {"kind": "Status", "message": "Unauthorized", "code": 401}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_exec_plugin_token_is_refreshed_and_sent(tmp_path, monkeypatch, recording_server):
    url, seen = recording_server
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": url}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
            "args": [str(plugin), str(tmp_path / "counter")], "interactiveMode": "Never"}}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kube = Kube.from_environment()
    assert kube.get("/api/v1/namespaces/x")["metadata"]["name"] == "x"
    assert kube.get("/api/v1/namespaces/x")["metadata"]["name"] == "x"
    # one plugin run at load, one per request as each token expires: every request got a new one
    assert seen == ["Bearer token-2", "Bearer token-3"]
    assert kubeconfig.read_text().count("token-") == 0  # the user's kubeconfig is never rewritten


def test_api_errors_carry_the_server_message(monkeypatch, recording_server):
    url, _ = recording_server
    kube = Kube(load_configuration(url))  # an explicit URL: no credentials at all
    with pytest.raises(ApiError) as info:
        kube.get("/api/v1/namespaces/x")
    assert info.value.status == 401 and "Unauthorized" in str(info.value)
    assert not info.value.retryable
