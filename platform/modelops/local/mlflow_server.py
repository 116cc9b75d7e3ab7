"""An embedded MLflow tracking server (sqlite backend, local artifacts) as a child process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

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

    def start(self, timeout: float = 90.0) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        self.proc = spawn(cmd, self.root / "server.log", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; "
                                   f"see {self.root / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not become healthy in {timeout:.0f}s; "
                           f"see {self.root / 'server.log'}")

    def stop(self) -> None:
        stop(self.proc)  # the server forks workers: the whole process group goes
        self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
