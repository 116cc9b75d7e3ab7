"""Where the test tiers find what CI puts beside the repository (`../shared`), and how they skip.

A tier that needs `../shared` (KServe's CRDs, the real Kubernetes control plane) skips with a
one-line reason in a user's clone without it; under CI (`CI=true`) it must run, so it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest import fail as fail_here  # only under CI=true

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MODELOPS_SHARED_DIR") or REPO_ROOT.parent / "shared")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str):
    """Skip with the reason; under CI a missing prerequisite is a failure, never a skip."""
    if IN_CI:
        fail_here(f"{reason} (CI=true: this tier must run)", pytrace=False)
    pytest.skip(reason)


def require_shared(sub: str, what: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        unavailable(f"{what} needs {path} (../shared beside the repository, as in CI)")
    return path


@dataclass(frozen=True)
class ControlPlane:
    """A real kube-apiserver + etcd + kube-controller-manager (../shared/k8s), admin kubeconfig."""

    kubeconfig: str
    state_dir: Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["kubectl", "--kubeconfig", kubeconfig or self.kubeconfig, *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc


    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until each CRD serves (right after creation `kubectl wait` can race its status)."""
        deadline = time.monotonic() + timeout
        for crd in crds:
            jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
            while self.kubectl("get", "crd", crd, "-o", f"jsonpath={jsonpath}", check=False).stdout != "True":
                if time.monotonic() > deadline:
                    raise AssertionError(f"CRD {crd} not Established after {timeout}s")
                time.sleep(0.2)


def start_control_plane() -> tuple[ControlPlane, bool]:
    """Start (or reuse) the control plane; returns it and whether this call started it."""
    k8s = require_shared("k8s/start", "the real Kubernetes API server tier")
    if shutil.which("kubectl") is None:
        unavailable("the real Kubernetes API server tier needs kubectl on PATH")
    state = Path(os.environ.get("MODELOPS_K8S_DIR") or REPO_ROOT / ".work" / "k8s")
    env = {**os.environ, "MODELOPS_K8S_DIR": str(state)}
    already = (state / "kube-apiserver.pid").exists()
    proc = subprocess.run([str(k8s)], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        unavailable(f"../shared/k8s/start failed: {proc.stderr.strip().splitlines()[-1:]}")
    return ControlPlane(kubeconfig=proc.stdout.strip(), state_dir=state), not already


def stop_control_plane(cp: ControlPlane) -> None:
    stop = SHARED / "k8s" / "stop"
    subprocess.run([str(stop)], env={**os.environ, "MODELOPS_K8S_DIR": str(cp.state_dir)},
                   capture_output=True, timeout=120)
