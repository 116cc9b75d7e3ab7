"""An embedded MLflow tracking server (sqlite backend, local artifacts) as a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from .. import retry
from .ports import free_port
from .processes import spawn, stop


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with its state under `root`; stop/start keep the same port."""

    def __init__(self, root: str | Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float | None = None) -> "MlflowServer":
        """Start it and wait until it answers /health (`retry.MLFLOW_READY`, or `timeout` seconds)."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        self.proc = spawn(cmd, self.root / "server.log", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; "
                                   f"see {self.root / 'server.log'}")
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200

        poll = retry.MLFLOW_READY if timeout is None else retry.Poll(retry.MLFLOW_READY.every, timeout)
        try:
            retry.wait_until_sync(healthy, poll, ignore=(httpx.HTTPError,), on_timeout=lambda: RuntimeError(
                f"mlflow server did not become healthy in {poll.timeout:.0f}s; see {self.root / 'server.log'}"))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop(self.proc)  # the server forks workers: the whole process group goes
        self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
