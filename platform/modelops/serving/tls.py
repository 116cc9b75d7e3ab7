"""The predictor's TLS: one certificate and key (`--tls-cert`, `--tls-key`, e.g. a cert-manager
Secret mounted as a volume) for HTTPS and gRPC, picked up again when the files change.

A Secret volume is updated by the kubelet swapping a symlink (`..data`), so the files are
watched by what `stat` sees through the links (inode, mtime, size), polled once a second for
REST and on every new connection for gRPC, not by file events on the link itself. A change is
loaded only once the pair is consistent (a key that does not match its certificate yet, half of
a rotation, keeps the previous pair serving); connections already open keep theirs, new ones get
the new pair: no request fails over a rotation.

REST: the reload goes into uvicorn's own `SSLContext` (`load_cert_chain` on a live context
applies to new handshakes). gRPC: `grpc.dynamic_ssl_server_credentials`, whose fetcher gRPC
calls before each new handshake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass

import grpc

log = logging.getLogger("modelops.serving.tls")


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str

    def stamp(self) -> tuple:
        out = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def read(self) -> tuple[bytes, bytes]:
        """(cert, key) PEM bytes, checked to be a matching pair (ssl.SSLError / OSError if not)."""
        with open(self.cert, "rb") as fh:
            cert = fh.read()
        with open(self.key, "rb") as fh:
            key = fh.read()
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(self.cert, self.key)  # raises on a mismatched or unreadable pair
        return cert, key

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


class ContextReloader:
    """Keeps a live SSLContext's certificate in step with the files (REST)."""

    def __init__(self, files: TlsFiles, context: ssl.SSLContext):
        self.files, self.context = files, context
        self._stamp = files.stamp()
        self.reloads = 0

    def poll(self) -> bool:
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        try:
            self.files.read()  # consistent?
            self.context.load_cert_chain(self.files.cert, self.files.key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS files changed but are not a usable pair yet (%s); still serving the previous one", exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.poll()


def grpc_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials that re-read the pair when it changes (checked per new connection)."""
    cert, key = files.read()
    state = {"stamp": files.stamp()}

    def fetch():
        stamp = files.stamp()
        if stamp == state["stamp"]:
            return None  # keep the current pair
        try:
            cert, key = files.read()
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS files changed but are not a usable pair yet (%s); gRPC keeps the previous one", exc)
            return None
        state["stamp"] = stamp
        log.info("gRPC TLS certificate reloaded from %s", files.cert)
        return grpc.ssl_server_certificate_configuration([(key, cert)])

    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([(key, cert)]), fetch)
