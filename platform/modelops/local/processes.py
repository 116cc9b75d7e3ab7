"""Child processes of local mode (MLflow, predictors), each in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` in a new session (so its workers can be signalled together), output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
