"""A webhook receiver for the tests: a real HTTP server on loopback (the user's side of the
webhook and gate contract). It records every request and refuses the first `fail_first`
attempts of each delivery, so retries are exercised."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from modelops.local.ports import free_port
from modelops.rollout.hooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify


class Receiver:
    """A real HTTP server: records every request; fails the first `fail_first` attempts per delivery."""

    def __init__(self, fail_first: int = 0, status: int = 200, delay: float = 0.0):
        self.fail_first = fail_first
        self.status = status
        self.delay = delay
        self.requests: list[dict] = []
        self.tries: dict[tuple, int] = defaultdict(int)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    delivery = (self.path, self.headers.get(DELIVERY_HEADER))
                    outer.tries[delivery] += 1
                    attempt = outer.tries[delivery]
                    code = 503 if attempt <= outer.fail_first else outer.status
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                           "code": code, "attempt": attempt})
                if outer.delay:
                    time.sleep(outer.delay)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if code >= 300 else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["code"] < 300 and (path is None or r["path"] == path)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self, path: str | None = None) -> list[dict]:
        """The JSON bodies the receiver accepted (2xx), in arrival order."""
        return [json.loads(r["body"]) for r in self.accepted(path)]

    def signed(self, secret: bytes) -> bool:
        """Every request carried a valid HMAC-SHA256 signature of its body."""
        return all(verify(secret, r["body"], r["headers"].get(SIGNATURE_HEADER)) for r in self.requests)
