"""The processes `modelops local up` starts besides the predictors: the router and, without
`--tracking-uri`, an embedded MLflow server; and the record of every child (`supervisor.json`),
which `modelops local down` reads to stop what is left even if the supervisor was killed.

Process management only: start, wait until ready, ask the router to drain a predictor, stop.
No rollout decision is made here (the driving loop is `supervisor.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from typing import Callable

import httpx

from .. import retry
from . import router_auth
from .manifest import Manifest
from .ports import free_port
from .processes import spawn, stop
from .rundir import RunDir, process_record, write_json


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Services:
    """The supervisor's own children and their record."""

    def __init__(self, manifest: Manifest, rundir: RunDir, *, tracking_uri: str | None, port: int,
                 grpc_port: int, host: str, say: Callable[[str], None], token_file: str | None = None):
        self.manifest = manifest
        # The router's static bearer token (router_auth): from the file, else $MODELOPS_ROUTER_TOKEN.
        self.token_file = token_file
        token = router_auth.load_token(token_file)
        self.admin_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.rundir = rundir
        self.tracking_uri = tracking_uri
        self.port = port
        self.grpc_port = grpc_port
        self.host = host
        self.say = say
        self.children: dict[str, dict] = {}
        self.router_proc: subprocess.Popen | None = None
        self.router_url = ""
        self.admin_url = ""
        self.mlflow = None

    # --- the record (supervisor.json) and the events log ---------------------------------------
    def write_record(self) -> None:
        doc = {**process_record(os.getpid()), "name": self.manifest.name, "manifest": str(self.manifest.path),
               "trackingUri": self.tracking_uri,
               "router": {"url": self.router_url, "admin": self.admin_url, "grpcPort": self.grpc_port or None},
               "children": self.children}
        doc["pgid"] = os.getpgid(0)
        write_json(self.rundir.supervisor_path, doc)

    def add_child(self, role: str, proc: subprocess.Popen, **more) -> None:
        self.children[role] = process_record(proc.pid, **more)
        self.write_record()

    def drop_child(self, role: str) -> None:
        if self.children.pop(role, None) is not None:
            self.write_record()

    def remove_record(self) -> None:
        try:
            self.rundir.supervisor_path.unlink()
        except FileNotFoundError:
            pass

    def log_event(self, kind: str, **fields) -> None:
        line = {"at": utcnow().isoformat().replace("+00:00", "Z"), "kind": kind, **fields}
        with open(self.rundir.root / "events.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    # --- MLflow --------------------------------------------------------------------------------
    async def start_mlflow(self, port: int | None) -> str:
        """The embedded MLflow server (sqlite + local artifacts under the run directory)."""
        from .mlflow_server import MlflowServer

        self.say(f"starting MLflow (sqlite + local artifacts in {self.rundir.mlflow})")
        self.mlflow = MlflowServer(self.rundir.mlflow, port=port or None)
        await asyncio.to_thread(self._start_mlflow)
        self.tracking_uri = self.mlflow.url
        return self.tracking_uri

    def _start_mlflow(self) -> None:
        self.mlflow.start()
        self.add_child("mlflow", self.mlflow.proc, port=self.mlflow.port)

    async def stop_mlflow(self) -> None:
        if self.mlflow is not None:
            await asyncio.to_thread(self.mlflow.stop)
            self.drop_child("mlflow")

    # --- the router ----------------------------------------------------------------------------
    async def start_router(self) -> None:
        admin_port = free_port()
        cmd = [sys.executable, "-m", "modelops.local.router", "--port", str(self.port),
               "--admin-port", str(admin_port), "--host", self.host, "--grpc-port", str(self.grpc_port or 0),
               *(["--token-file", self.token_file] if self.token_file else [])]
        self.router_proc = spawn(cmd, self.rundir.logs / "router.log")
        self.router_url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.add_child("router", self.router_proc, port=self.port, adminPort=admin_port,
                       grpcPort=self.grpc_port or None)
        async with httpx.AsyncClient(timeout=1.0) as client:
            async def up() -> bool:
                self.check_router()  # exited: raised at once, not waited for
                return (await client.get(f"{self.admin_url}/healthz")).status_code == 200

            await retry.wait_until(up, retry.ROUTER_READY, ignore=(httpx.HTTPError,), on_timeout=lambda: RuntimeError(
                f"the router did not start in {retry.ROUTER_READY.timeout:.0f}s; "
                f"see {self.rundir.logs / 'router.log'}"))

    def check_router(self) -> None:
        """Raise if the router exited (local mode cannot serve without it)."""
        if self.router_proc is not None and self.router_proc.poll() is not None:
            raise RuntimeError(f"the router exited with {self.router_proc.returncode}; "
                               f"see {self.rundir.logs / 'router.log'}")

    async def drain(self, http: httpx.AsyncClient, url: str) -> float | None:
        """Ask the router to wait until nothing is in flight to `url` (no longer routed); the wait
        in ms, or None when the router did not answer."""
        try:
            r = await http.post(f"{self.admin_url}/drain", json={"urls": [url], "timeout": 30},
                                 headers=self.admin_headers)
            return r.json().get("waited_ms", 0)
        except (httpx.HTTPError, ValueError):
            return None

    async def stop_router(self) -> None:
        """uvicorn finishes the requests in flight before it exits."""
        await asyncio.to_thread(stop, self.router_proc)
        self.drop_child("router")
