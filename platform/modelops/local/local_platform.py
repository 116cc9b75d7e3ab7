"""Local mode's serving platform for the rollout driver: the predictor processes and the router.

- `canary_ready`: the canary's predictor and the stable's both answer ready (the split is in place);
- `interface`: what a version's predictor serves, read from its converted directory;
- `apply`: the router's routes, from `RolloutState.traffic`, written only when they change
  (predictors that are not ready are left out; the supervisor retires what nothing needs);
- `set_shadow`, `performance_gate`: not available yet in local mode (the mirror file in the run
  dir and the in-process load test are to come): with `spec.rollout.shadow` / `performanceGate`
  set they raise `NotAvailableYet` (inconclusive: the candidate is rolled back, never promoted
  blind); without them they are never called.
"""

from __future__ import annotations

import httpx

from .. import errors
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
        if mirror is not None:
            raise errors.NotAvailableYet("spec.rollout.shadow: mirroring to the candidate is not available yet "
                                         "in local mode (the mirror file in the run dir is to come)")

    def performance_gate(self, test):
        raise errors.NotAvailableYet("spec.rollout.performanceGate: the load test is not available yet in "
                                     "local mode")
