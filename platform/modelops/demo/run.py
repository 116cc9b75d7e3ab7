"""`modelops demo`: model versions moving into traffic, judged on the model as well as on the server,
promoted or rolled back by themselves, with MLflow showing what happened. All on this machine.

1. starts an embedded MLflow server (sqlite + local artifacts under the work dir);
2. trains and registers five versions of a PyTorch MLP (seeded, nothing downloaded): v1; a good v2
   (v1's model registered again: the same answers); an erroring v3 (`register_guarded_mlp`: it
   fails at run time on inputs whose first feature exceeds 50, which one request in five has); a
   silently wrong v4 (`swap_output_columns`: answers 200, quickly, with two output columns swapped);
   a slow v5 (`add_slow_branch`: the same answers, ~100x the work per row); v3..v5 are ONNX graphs
   edited from v1's (the mlflow.onnx flavor: no export to wait for); the alias `champion` points at v1;
3. runs `modelops local up` on a ModelDeployment that follows `champion` with a canary rollout, a
   performance gate (a load test of the candidate against the stable before any traffic) and a
   shadow phase (the stable predictor mirrors live requests to the candidate and compares the
   answers; clients only get the stable's), and sends client traffic through its router for the
   rest of the demo, counting per version the answers it got;
4. champion -> v2: its gate and shadow pass, the canary goes 20% -> 50% -> 100%, analysed every
   interval, and is promoted (the alias `production` follows);
5. champion -> v3: the copies it fails (500) disagree with the stable's answers: rolled back in
   shadow before any traffic, no client request got its errors;
6. champion -> v4: its shadow comparisons disagree (wrong numbers) and it is rolled back before
   any traffic: no client request was answered by it;
7. champion -> v5: its performance gate fails; weight 0 throughout, no client request reached it;
then prints per version the outcome, the deciding check, the client answers it served and where
its rollout report is in MLflow (`--json PATH`: the same as JSON), and the wall time.
`--keep-running` leaves it all up to explore.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .live import FAILURE_LIMIT, STEPS, LocalUp, Traffic, _quiet, manifest

MODEL = "demo-mlp"
DEPLOYMENT = "demo-mlp"
# The gate's p99 budget is generous (an absolute latency depends on the machine and its load); the
# throughput against the stable's, measured in the same minute on the same machine, is what stops v5.
GATE = {"concurrency": 2, "duration": "2s", "maxP99Ms": 1000, "minThroughputRatio": 0.3}
SHADOW = {"percent": 100, "minRequests": 30, "maxDuration": "60s"}
WHAT = ["the first version", "good: v1's model registered again",
        "erroring: fails on inputs whose first feature > 50 (1 request in 5)",
        "silently wrong: answers 200, output columns 0 and 1 swapped",
        "slow: the same answers, ~100x the work per row"]


def _console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 220, soft_wrap=False)


def _register(tracking: str, work_dir: Path) -> list[str]:
    """v1 and v2; v2 is v1's logged model registered again (the same weights, as a re-export or a
    re-packaging gives: its answers agree with v1's)."""
    import mlflow
    from mlflow import MlflowClient

    from . import models

    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    with open(work_dir / "register.log", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        v1 = models.register_torch_mlp(tracking, MODEL, seed=0)
        v2 = str(mlflow.register_model(client.get_model_version(MODEL, v1).source, MODEL).version)
    return [v1, v2]


def register_bad(tracking: str) -> list[str]:
    """v3 (erroring), v4 (silently wrong), v5 (slow): ONNX graphs edited from v1's model."""
    from . import models

    return [models.register_guarded_mlp(tracking, MODEL, seed=0), models.register_swapped_mlp(tracking, MODEL, seed=0),
            models.register_slow_mlp(tracking, MODEL, seed=0)]


class Registering:
    """`register_bad` in a child process (its output in register.log), while v1 and v2 start."""

    def __init__(self, tracking: str, work_dir: Path):
        self.out = work_dir / "registered.json"
        self.log = work_dir / "register.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "modelops.demo.run", tracking, str(self.out)],
                                         stdout=log, stderr=subprocess.STDOUT)

    def result(self, timeout: float = 300.0) -> list[str]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError(f"registering v3..v5 took more than {timeout:.0f}s; see {self.log}") from None
        if rc != 0 or not self.out.exists():
            raise RuntimeError(f"registering v3..v5 failed ({rc}): {self.log.read_text()[-1500:]}")
        return json.loads(self.out.read_text())


def _rolled_back(version: str):
    return lambda s: ((s.get("canary") or {}).get("rolledBack") or {}).get("version") == version


def run_demo(work_dir: Path, interval: str = "3s", keep_running: bool = False, port: int = 0,
             json_path: Path | None = None) -> int:
    _quiet()
    import yaml
    from mlflow import MlflowClient

    from ..deployment.spec import parse_duration
    from ..local.manifest import LOCAL_NAMESPACE
    from ..local.mlflow_server import MlflowServer
    from ..local.ports import free_port
    from ..rollout.history import deployment_key
    from . import models, story

    console = _console()

    def say(text: str, step: str = "") -> None:
        console.print(f"[bold cyan]{step}[/] {text}" if step else f"      {text}", markup=bool(step))

    seconds = parse_duration(interval)
    pause = min(1.0, seconds)
    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir, ignore_errors=True)  # every run starts from a clean registry
    work_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    say(f"starting MLflow (sqlite + local artifacts in {work_dir / 'mlflow'})", "[1/7]")
    server = MlflowServer(work_dir / "mlflow").start()
    up = traffic = None
    try:
        tracking = server.url
        say(f"training and registering {MODEL} (seeded, nothing downloaded): v1; v2 good; v3 erroring "
            f"(fails at run time on inputs whose first feature > {models.GUARD_LIMIT:g}); v4 silently wrong "
            "(output columns swapped); v5 slow (the same answers, ~100x the work); alias champion -> v1", "[2/7]")
        t = time.perf_counter()
        v1, v2 = _register(tracking, work_dir)
        registering = Registering(tracking, work_dir)
        say(f"registered v{v1} and v{v2} in {time.perf_counter() - t:.0f}s; v3..v5 are registered in the "
            "background meanwhile")
        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        client.set_registered_model_alias(MODEL, "champion", v1)

        file = work_dir / f"{DEPLOYMENT}.yaml"
        file.write_text(yaml.safe_dump(manifest(interval, DEPLOYMENT, MODEL, performanceGate=GATE, shadow=SHADOW),
                                       sort_keys=False))
        say(f"modelops local up -f {file}  (the ModelDeployment kubectl would apply; each new version: a "
            f"performance gate (c{GATE['concurrency']}, {GATE['duration']}, p99 <= {GATE['maxP99Ms']} ms, "
            f">= {GATE['minThroughputRatio']}x the stable's throughput), then a shadow phase ({SHADOW['percent']}% "
            f"of the stable's requests mirrored, >= {SHADOW['minRequests']} comparisons, agreement >= 0.99: "
            f"answers equal within 1e-3), then canary steps {STEPS}% analysed every {interval} from the predictors' own /metrics; "
            "short on purpose for the demo)", "[3/7]")
        up = LocalUp(file, work_dir / "local", tracking, port or free_port())
        status = up.wait("v1 to serve", lambda s: (s.get("stable") or {}).get("version") == v1
                         and s.get("url"))
        router = status["url"]
        traffic = Traffic(router, DEPLOYMENT)
        say(f"client traffic through the router {router} from now on (2 clients; one input in five has a "
            "first feature of 100); the clients count, per version, the answers they got")
        time.sleep(pause)

        t = time.perf_counter()
        say(f"moving alias champion -> v{v2} (good): gate, shadow, then {' -> '.join(f'{s}%' for s in STEPS)}",
            "[4/7]")
        client.set_registered_model_alias(MODEL, "champion", v2)
        up.wait(f"v{v2} to be promoted", lambda s: (s.get("stable") or {}).get("version") == v2)
        say(f"v{v2} promoted {time.perf_counter() - t:.0f}s after the alias moved")
        v3, v4, v5 = registering.result()
        versions = [v1, v2, v3, v4, v5]
        time.sleep(pause)

        for step, v, what, ending in (("[5/7]", v3, "erroring on one input in five", "rolled back in shadow"),
                                      ("[6/7]", v4, "silently wrong: outputs swapped", "rolled back in shadow"),
                                      ("[7/7]", v5, "slow", "stopped by its performance gate")):
            t = time.perf_counter()
            say(f"moving alias champion -> v{v} ({what})", step)
            client.set_registered_model_alias(MODEL, "champion", v)
            up.wait(f"v{v} to be {ending}", _rolled_back(v))
            say(f"v{v} {ending} {time.perf_counter() - t:.0f}s after the alias moved, before any client traffic")
            time.sleep(pause if v != v5 else 0.2)
        traffic.stop()
        events, seen = up.events(), dict(up.max_weight)
        if not keep_running:  # the history (MLflow tags, the reports) is written before it stops
            up.down()
            up = None
        key = deployment_key(LOCAL_NAMESPACE, DEPLOYMENT)
        tags = {v: dict(client.get_model_version(MODEL, v).tags) for v in versions}
        aliases = client.get_registered_model(MODEL).aliases
        records = traffic.records
        answered, errors = traffic.answered(200), traffic.answered(500)
        rows = story.stories(list(zip(versions, WHAT)), events, tags, key, answered=answered, errors=errors,
                             max_weight=seen, tracking=tracking, model=MODEL)
        lost = [r for r in records if r[1] not in (200, 500)]
        failed = sum(errors.values())
        by = {s.version: s for s in rows}
        unseen = all(by[v].client_answers == by[v].client_errors == by[v].max_weight == 0 for v in (v3, v4, v5))
        ok = (by[v2].outcome == "promoted" and by[v3].phase == by[v4].phase == "shadow"
              and by[v5].phase == "performanceGate" and unseen
              and not lost and failed == 0 and aliases.get("production") == v2)
        console.print()
        console.print(story.rich_table(rows, f"What happened (interval {interval}, steps {STEPS}%, "
                                             f"failureLimit {FAILURE_LIMIT}; a report is in MLflow once a "
                                             "version's rollout ends):"))
        say(f"client: {len(records)} requests through the router, {len(lost)} lost; answered per version: "
            + ", ".join(f"v{v} {answered.get(v, 0)}" for v in versions)
            + f"; {failed} failed (v{v3}'s 500s reached {errors.get(v3, 0)} clients); v{v4} (wrong numbers) "
              f"answered {answered.get(v4, 0)}")
        say(f"MLflow UI: {tracking}/#/models/{MODEL}: aliases "
            + ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items()))
            + f"; each version's tags {key} (+ .history, .performanceGate, .shadow, .report) and modelops.* "
              "(ONNX location, sha256, parity)")
        say(f"rollout reports (report.json + report.png): the version's page {tracking}/#/models/{MODEL}/versions/<v> "
            f"-> its run -> Artifacts -> modelops-rollout/{LOCAL_NAMESPACE}.{DEPLOYMENT}/<start>/")
        say(f"status document: modelops local status --state-dir {work_dir / 'local'}")
        wall = time.perf_counter() - t0
        if json_path is not None:
            doc = story.summary(rows, ok=ok, wall_s=round(wall, 1), interval=interval, tracking=tracking,
                                model=MODEL, deployment=DEPLOYMENT, tag_key=key, aliases=dict(aliases),
                                client={"requests": len(records), "lost": len(lost), "failed": failed,
                                        "answered": dict(answered), "errors": dict(errors)})
            Path(json_path).write_text(json.dumps(doc, indent=2))
            say(f"summary as JSON: {json_path}")
        verdict = "" if ok else "  -- SOMETHING WENT WRONG, see above"
        if keep_running:
            say(f"done in {wall:.0f}s (wall time){verdict}")
            say(f"everything keeps running: router {router}, MLflow {tracking}; move the alias in the MLflow UI "
                "and watch; Ctrl+C stops it all")
            try:
                while up.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:
            say("(everything stops with the demo: `modelops demo --keep-running` to explore)")
            server.stop()
            say(f"done in {wall:.0f}s (wall time); work dir {work_dir}{verdict}")
        return 0 if ok else 1
    finally:
        if traffic is not None:
            traffic.stop()
        if up is not None:
            up.down()
        server.stop()


if __name__ == "__main__":  # `Registering`'s child: python -m modelops.demo.run TRACKING_URI OUT.json
    _quiet()
    Path(sys.argv[2]).write_text(json.dumps(register_bad(sys.argv[1])))
