"""Local mode's state directory and the processes it started.

    <dir>/supervisor.json   the running `modelops local up`: its pid and every child it started
                            (MLflow, router, predictors), each in a process group of its own
    <dir>/status.json       the status document the operator would write (`modelops local status`)
    <dir>/local.json        what survives a restart besides the status: generation, spec hash
    <dir>/logs/             one log per child
    <dir>/models/           the converted ONNX model of each version served
    <dir>/mlflow/           the embedded MLflow server (sqlite + artifacts), unless --tracking-uri

`stop_recorded()` is `modelops local down`: it asks the supervisor to stop (SIGTERM), then makes
sure no recorded process group is left, even if the supervisor was killed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

DEFAULT_ROOT = Path(".modelops/local")


def default_dir(name: str) -> Path:
    return DEFAULT_ROOT / name


def write_json(path: Path, doc: dict) -> None:
    """Atomic replace: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None, ticks: int | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if ticks is not None:
        now = start_ticks(pid)
        if now is not None and now != ticks:
            return False  # the pid was reused by another process
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def group_alive(pgid: int | None) -> bool:
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def process_record(pid: int, **more) -> dict:
    return {"pid": pid, "pgid": os.getpgid(pid) if alive(pid) else pid, "startTicks": start_ticks(pid), **more}


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def supervisor_path(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def local_path(self) -> Path:
        return self.root / "local.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    def create(self) -> RunDir:
        for d in (self.root, self.logs, self.models):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def supervisor(self) -> dict | None:
        return read_json(self.supervisor_path)

    def running(self) -> dict | None:
        """The supervisor record if that supervisor is still alive."""
        rec = self.supervisor()
        if rec and alive(rec.get("pid"), rec.get("startTicks")):
            return rec
        return None

    def status(self) -> dict | None:
        return read_json(self.status_path)


def _wait_gone(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not check():
            return True
        time.sleep(0.1)
    return not check()


def stop_group(pgid: int, timeout: float = 15.0) -> bool:
    """SIGTERM a process group, SIGKILL it after `timeout`; True if something was there."""
    if not group_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if not _wait_gone(lambda: group_alive(pgid), timeout):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(lambda: group_alive(pgid), 5.0)
    return True


def stop_recorded(rundir: RunDir, timeout: float = 60.0) -> list[str]:
    """Stop the supervisor and every process group it recorded; returns what was stopped."""
    rec = rundir.supervisor()
    if not rec:
        return []
    stopped = []
    pid, ticks = rec.get("pid"), rec.get("startTicks")
    if alive(pid, ticks):
        try:
            os.kill(pid, signal.SIGTERM)  # it stops its children itself, draining traffic first
        except ProcessLookupError:
            pass
        if not _wait_gone(lambda: alive(pid, ticks), timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(lambda: alive(pid, ticks), 5.0)
        stopped.append(f"supervisor (pid {pid})")
    # Whatever it could not stop (or everything, if it was killed): by process group.
    rec = rundir.supervisor() or rec
    for role, child in (rec.get("children") or {}).items():
        pgid = child.get("pgid")
        leader_ok = child.get("startTicks") is None or start_ticks(child["pid"]) in (None, child["startTicks"])
        if pgid and leader_ok and stop_group(pgid):
            stopped.append(f"{role} (process group {pgid})")
    try:
        rundir.supervisor_path.unlink()
    except FileNotFoundError:
        pass
    return stopped
