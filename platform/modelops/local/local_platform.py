"""Local mode's serving platform for the rollout driver: the predictor processes and the router.

- `canary_ready`: the canary's predictor and the stable's both answer ready (the split is in place);
- `interface`: what a version's predictor serves, read from its converted directory;
- `apply`: the router's routes, from `RolloutState.traffic`, written only when they change
  (predictors that are not ready are left out; the supervisor retires what nothing needs);
- `set_shadow`: the mirror configuration file (`shadow-v<version>.json` in the run dir) that the
  stable version's predictor watches (`modelops serve --shadow-config`): the candidate's address
  while mirroring, `{}` otherwise; written only when it changes (no predictor restarts);
- `performance_gate`: the load tests (`modelops.bench.loadtest`, in process, in a thread of
  their own so the supervisor's loop goes on), the stable's then the candidate's, once per
  `test.key`; None while they run, or while the candidate's predictor is not ready yet.
"""

from __future__ import annotations

import json
import threading

import httpx

from .. import errors
from ..bench.loadtest import loadtest
from ..rollout.actions import LoadTestResult
from ..rollout.interface import Interface, from_model_dir
from ..rollout.state import Traffic
from .predictors import Predictors


class LocalPlatform:
    def __init__(self, predictors: Predictors, admin_url: str, *, timeout: float = 10.0,
                 headers: dict | None = None):
        self.predictors = predictors
        self.admin_url = admin_url
        self._http = httpx.Client(timeout=timeout, headers=headers or {})  # the router's token, if any
        self.routes: list | None = None  # what the router was last given
        self.changed = False  # the last apply wrote new routes
        self._gates: dict[str, dict] = {}  # test.key -> {"stable": doc, "candidate": doc, "error": str}

    def close(self) -> None:
        self._http.close()

    def canary_ready(self, traffic: Traffic) -> bool | None:
        if traffic.canary is None:
            return None
        return self.predictors.ready(traffic.canary) and self.predictors.ready(traffic.stable)

    def interface(self, version: str) -> Interface | None:
        slot = self.predictors.get(version)
        return from_model_dir(slot.onnx_dir) if slot is not None and slot.onnx_dir is not None else None

    def desired_routes(self, traffic: Traffic) -> list[dict]:
        routes = []
        for version, weight in ((traffic.stable, 100 - traffic.weight if traffic.canary else 100),
                                (traffic.canary, traffic.weight)):
            slot = self.predictors.get(version)
            if slot is None or not slot.ready:
                continue
            route = {"version": version, "url": slot.url, "weight": weight}
            if slot.grpc_port:
                route["grpc"] = f"127.0.0.1:{slot.grpc_port}"
            routes.append(route)
        return routes

    def apply(self, traffic: Traffic) -> None:
        routes = self.desired_routes(traffic)
        self.changed = routes != self.routes
        if not self.changed:
            return
        r = self._http.put(f"{self.admin_url}/routes", json={"routes": routes})
        r.raise_for_status()
        self.routes = routes

    def set_shadow(self, mirror) -> None:
        wanted = {}
        if mirror is not None:
            candidate = self.predictors.get(mirror.candidate)
            if candidate is None or not candidate.ready:
                raise errors.ServingError(f"v{mirror.candidate}'s predictor is not ready: nothing to mirror to yet")
            wanted[mirror.stable] = mirror.to_config(candidate.url, self.predictors.name)
        for version in self.predictors.slots:
            self._write_shadow(version, wanted.get(version, {}))

    def _write_shadow(self, version: str, config: dict) -> None:
        path = self.predictors.shadow_file(version)
        text = json.dumps(config, sort_keys=True)
        current = path.read_text() if path.exists() else None
        if current == text or (current is None and not config):  # unchanged, or off and never on
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: the predictor never reads half a file

    def performance_gate(self, test):
        got = self._gates.get(test.key)
        if got is None:
            stable, candidate = self.predictors.get(test.stable_version), self.predictors.get(test.version)
            if stable is None or not stable.ready:
                raise errors.ServingError(f"the stable v{test.stable_version}'s predictor is not ready: no baseline")
            if candidate is None or not candidate.ready:
                return None  # deployed at 0%, still starting
            got = self._gates[test.key] = {}
            threading.Thread(target=self._run_gate, args=(test, stable.url, candidate.url, got),
                             name=f"gate-{test.key}", daemon=True).start()
        if "error" in got:
            return LoadTestResult(test.version, test.attempt, error=got["error"])
        if "candidate" not in got:
            return None
        return LoadTestResult(test.version, test.attempt, stable=got["stable"], candidate=got["candidate"])

    def _run_gate(self, test, stable_url: str, candidate_url: str, out: dict) -> None:
        kw = {"concurrency": test.concurrency, "duration": test.duration_seconds}
        try:
            out["stable"] = loadtest(stable_url, self.predictors.name, **kw)
            out["candidate"] = loadtest(candidate_url, self.predictors.name, **kw)
        except errors.ModelOpsError as exc:
            out["error"] = f"{exc.reason}: {exc}"
        except Exception as exc:  # the load test itself broke: inconclusive, never a pass
            out["error"] = f"{type(exc).__name__}: {exc}"
