"""`modelops serve --tls-cert/--tls-key`: HTTPS and gRPC over TLS from files laid out as the kubelet
lays out a Secret volume (`tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`), rotated to a
certificate of another CA while clients keep connecting: no request fails, and new connections get
the new certificate (a client trusting only the new CA gets in, one trusting only the old no more).
CAs and certificates are made here with `cryptography`.
"""

from __future__ import annotations

import datetime
import os
import ssl
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from predictor_access import Serve, grpc_infer, relu_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca) -> tuple[bytes, bytes]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(_name("predictor")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class SecretVolume:
    """A directory as the kubelet updates a Secret volume: one atomic symlink swap."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True)
        self.n = 0

    def write(self, cert: bytes, key: bytes) -> None:
        self.n += 1
        data = self.root / f"..2026_{self.n}"
        data.mkdir()
        (data / "tls.crt").write_bytes(cert)
        (data / "tls.key").write_bytes(key)
        tmp = self.root / "..data_tmp"
        os.symlink(data.name, tmp)
        os.replace(tmp, self.root / "..data")
        for f in ("tls.crt", "tls.key"):
            if not (self.root / f).is_symlink():
                os.symlink(f"..data/{f}", self.root / f)


def test_https_and_grpc_tls_with_rotation_under_load(tmp_path):
    ca1, ca2 = make_ca("ca-one"), make_ca("ca-two")
    for name, ca in (("ca1.pem", ca1), ("ca2.pem", ca2)):
        (tmp_path / name).write_bytes(pem(ca[1]))
    (tmp_path / "both.pem").write_bytes(pem(ca1[1]) + pem(ca2[1]))
    vol = SecretVolume(tmp_path / "tls")
    vol.write(*make_leaf(ca1))
    srv = Serve(relu_model(tmp_path / "m"), "relu", tmp_path, "--tls-cert", str(vol.root / "tls.crt"),
                "--tls-key", str(vol.root / "tls.key"), scheme="https", verify=str(tmp_path / "ca1.pem"))

    def rest(ca: str) -> int:
        ctx = ssl.create_default_context(cafile=str(tmp_path / ca))
        with httpx.Client(base_url=srv.url, verify=ctx, timeout=10) as c:  # a new connection
            return c.post("/v2/models/relu/infer", json={"inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1, 2, -3, 4]}]}).status_code

    def grpc_call(ca: str):
        creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / ca).read_bytes())
        return grpc_infer(srv.grpc_target, "relu", credentials=creds)[0]

    try:
        assert rest("ca1.pem") == 200 and grpc_call("ca1.pem") == grpc.StatusCode.OK
        with pytest.raises(httpx.ConnectError):
            rest("ca2.pem")  # not yet: the server still presents CA one's certificate

        failures, done, counts = [], threading.Event(), {"rest": 0, "grpc": 0}

        def load(kind):
            while not done.is_set():
                try:
                    ok = rest("both.pem") == 200 if kind == "rest" else grpc_call("both.pem") == grpc.StatusCode.OK
                except Exception as exc:  # any failure under rotation is the defect
                    ok, exc_text = False, repr(exc)
                    failures.append((kind, exc_text))
                    continue
                counts[kind] += 1
                if not ok:
                    failures.append((kind, "not OK"))

        threads = [threading.Thread(target=load, args=(k,)) for k in ("rest", "rest", "grpc")]
        for t in threads:
            t.start()
        time.sleep(1.5)
        vol.write(*make_leaf(ca2))  # the rotation (cert-manager renewing into a new CA, say)
        deadline = time.monotonic() + 15
        while True:
            try:
                if rest("ca2.pem") == 200 and grpc_call("ca2.pem") == grpc.StatusCode.OK:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the rotated certificate was not picked up"
            time.sleep(0.2)
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join(30)
        assert failures == [], failures[:5]
        assert counts["rest"] > 5 and counts["grpc"] > 2, counts
        with pytest.raises(httpx.ConnectError):
            rest("ca1.pem")  # the old certificate is gone from new handshakes
        assert grpc_call("ca1.pem") == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_a_half_written_rotation_keeps_the_previous_pair(tmp_path):
    """A key that does not match its certificate (yet) is not loaded: the old pair keeps serving."""
    ca = make_ca("ca")
    (tmp_path / "ca.pem").write_bytes(pem(ca[1]))
    cert, key = make_leaf(ca)
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    srv = Serve(relu_model(tmp_path / "m"), "relu", tmp_path, "--tls-cert", str(tmp_path / "tls.crt"),
                "--tls-key", str(tmp_path / "tls.key"), scheme="https", verify=str(tmp_path / "ca.pem"))
    try:
        (tmp_path / "tls.crt").write_bytes(make_leaf(ca)[0])  # a new certificate, the old key
        time.sleep(2.5)
        with httpx.Client(base_url=srv.url, verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
                          timeout=10) as c:
            assert c.get("/v2/health/live").status_code == 200
        creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "ca.pem").read_bytes())
        assert grpc_infer(srv.grpc_target, "relu", credentials=creds)[0] == grpc.StatusCode.OK
        assert "not a usable pair yet" in srv.log()
    finally:
        srv.stop()


def test_a_missing_or_mismatched_pair_fails_at_start(tmp_path):
    import subprocess

    from predictor_access import MODELOPS

    ca = make_ca("ca")
    cert, _ = make_leaf(ca)
    _, other_key = make_leaf(ca)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(other_key)
    r = subprocess.run([MODELOPS, "serve", str(relu_model(tmp_path / "m")), "--name", "relu", "--http-port", "0",
                        "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("modelops serve: --tls-cert/--tls-key: ") and "KEY_VALUES_MISMATCH" in r.stderr
    (tmp_path / "k.pem").unlink()
    r = subprocess.run([MODELOPS, "serve", str(tmp_path / "m"), "--name", "relu", "--http-port", "0",
                        "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "No such file" in r.stderr, r.stderr[-2000:]
