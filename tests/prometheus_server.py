"""A real Prometheus server for the tests (Debian's `prometheus` package, installed by
scripts/bootstrap.sh when run as root).

It listens on a free loopback port with its own configuration (scrape and evaluation every
second) and its own storage directory, and scrapes whatever targets the test adds: the target
list is a `file_sd` file that Prometheus re-reads when it changes. Without the binary the tests
that need it skip with the reason (and fail under CI=true: `sharedenv.unavailable`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from modelops.local.ports import free_port
from modelops.local.processes import spawn, stop

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: predictors
    metrics_path: /metrics
    file_sd_configs:
      - files: [{targets}]
"""


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusServer:
    def __init__(self, work: Path):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = self.work / "targets.json"
        self.targets: dict[str, dict] = {}
        self.log = self.work / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "PrometheusServer":
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed")
        self._write_targets()
        config = self.work / "prometheus.yml"
        config.write_text(CONFIG.format(targets=json.dumps(str(self.targets_file))))
        self.proc = spawn([binary, f"--config.file={config}", f"--storage.tsdb.path={self.work / 'data'}",
                           f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
                          self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def _write_targets(self) -> None:
        groups = [{"targets": [t], "labels": labels} for t, labels in sorted(self.targets.items())]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def add_target(self, host_port: str, **labels: str) -> None:
        self.targets[host_port] = labels
        self._write_targets()

    def wait_for_target(self, host_port: str, timeout: float = 30) -> None:
        """Until Prometheus has scraped the target successfully at least once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()
            for t in r["data"]["activeTargets"]:
                if t["labels"].get("instance") == host_port and t["health"] == "up":
                    return
            time.sleep(0.3)
        raise AssertionError(f"prometheus never scraped {host_port}: {self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> list:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        stop(self.proc)
