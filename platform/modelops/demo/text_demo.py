"""`modelops demo --text`: a Hugging Face text classifier promoted by canary, on this machine.

1. starts an embedded MLflow server;
2. builds two versions of a BERT-class classifier (seeded weights, a vocabulary we write, its head
   trained for a few steps; nothing downloaded) and logs them as MLflow `transformers` models;
   alias `champion` -> v1;
3. `modelops local up` on a ModelDeployment that follows `champion`: each version is converted to
   ONNX with its tokenizer, its parity proven against the original pipeline, and served text in;
4. clients send text (V2 `BYTES`) through the router; the alias moves to v2, whose canary goes
   20% -> 50% -> 100% and is promoted;
5. prints what happened, the client's count of lost requests (zero) and where to look in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

from .live import STEPS, LocalUp, _quiet, manifest

MODEL = "demo-text"


class TextTraffic:
    """Clients sending texts through the router (V2 REST, one BYTES input)."""

    def __init__(self, url: str, deployment: str, threads: int = 2, pause: float = 0.01):
        self.url = f"{url}/v2/models/{deployment}/infer"
        self.pause = pause
        self.records: list[tuple[float, object, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        import httpx

        from ..words import seeded_texts

        texts = seeded_texts(50, seed=100 + seed, max_words=30)
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [texts[i % 50]]}]}
                i += 1
                try:
                    r = http.post(self.url, json=body)
                    self.records.append((time.monotonic(), r.status_code, r.headers.get("x-modelops-version", "")))
                except httpx.HTTPError as exc:
                    self.records.append((time.monotonic(), type(exc).__name__, ""))
                time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _story(events: list[dict], tags: dict[str, dict], key: str) -> list[tuple[str, ...]]:
    """One row per version: what happened to it, its analyses, the deciding check, its MLflow tag."""
    rows = []
    for v in sorted(tags, key=int):
        mine = [e for e in events if e.get("version") == v]
        analyses = [e for e in mine if e["kind"] == "Analysis"]
        passed = sum(1 for a in analyses if a["outcome"] == "Passed")
        failed = sum(1 for a in analyses if a["outcome"] == "Failed")
        kinds = [e["kind"] for e in mine]
        refused = next((e for e in mine if e["kind"] == "RolledBack" and e.get("reason") == "InterfaceChanged"), None)
        if refused is not None:
            outcome = "refused"
        elif "RolledBack" in kinds:
            outcome = "rolled back"
        elif "Promoted" in kinds:
            outcome = "promoted"
        elif "Serving" in kinds:
            outcome = "served first"
        else:
            outcome = "-"
        decided = next((e for e in reversed(mine) if e["kind"] == "RolledBack"), None)
        check = ""
        if refused is not None:
            check = refused.get("message") or ""
        elif decided is not None:
            last = next((a for a in reversed(analyses) if a["outcome"] == "Failed"), None)
            check = (last or {}).get("message") or decided.get("check") or ""
        counts = ", ".join(x for x in (passed and f"{passed} passed", failed and f"{failed} failed") if x) or "-"
        parity = tags[v].get("modelops.parity")
        err = f"{json.loads(parity)['max_abs_err']:.1e}" if parity else "-"
        rows.append((f"v{v}", err, outcome, counts, check or "-", tags[v].get(key, "-")))
    return rows


def _table(rows: list[tuple[str, ...]]) -> str:
    head = ("version", "parity max|err|", "outcome", "analyses", "deciding check", "MLflow tag (this deployment)")
    limits = [60] * (len(head) - 2) + [80, 60]  # the deciding check in full (an interface's differences)
    widths = [min(limits[i], max(len(str(r[i])) for r in [head, *rows])) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt.format(*(c if len(c) <= n else c[:n - 1] + "~" for c, n in zip(map(str, r), limits)))
              for r in rows]
    return "\n".join(lines)


def run_text_demo(work_dir: Path, interval: str = "3s", keep_running: bool = False, port: int = 0) -> int:
    _quiet()
    import yaml
    from mlflow import MlflowClient

    from ..local.mlflow_server import MlflowServer
    from ..local.ports import free_port
    from .text_models import register_text_classifier

    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"[1/4] starting MLflow (sqlite + local artifacts in {work_dir / 'mlflow'})", flush=True)
    server = MlflowServer(work_dir / "mlflow").start()
    up = traffic = None
    try:
        tracking = server.url
        print(f"[2/4] building and logging {MODEL}: two BERT-class text classifiers (MLflow `transformers` "
              "flavor, seeded, nothing downloaded); alias champion -> v1", flush=True)
        with open(work_dir / "register.log", "w") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            versions = [register_text_classifier(tracking, MODEL, seed=0),
                        register_text_classifier(tracking, MODEL, seed=1)]
        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        client.set_registered_model_alias(MODEL, "champion", versions[0])
        doc = manifest(interval, name=MODEL, model=MODEL)
        file = work_dir / f"{MODEL}.yaml"
        file.write_text(yaml.safe_dump(doc, sort_keys=False))
        print(f"[3/4] modelops local up -f {file}  (ONNX + tokenizer, parity against the pipeline, text in)",
              flush=True)
        up = LocalUp(file, work_dir / "local", tracking, port or free_port())
        status = up.wait("v1 to serve", lambda s: (s.get("stable") or {}).get("version") == versions[0]
                         and s.get("url"), timeout=300)
        router = status["url"]
        traffic = TextTraffic(router, MODEL)
        print(f"      client texts through the router {router} from now on (2 clients)", flush=True)
        time.sleep(2.0)
        print(f"[4/4] moving alias champion -> v{versions[1]}: canary {' -> '.join(f'{s}%' for s in STEPS)}",
              flush=True)
        t = time.perf_counter()
        client.set_registered_model_alias(MODEL, "champion", versions[1])
        up.wait(f"v{versions[1]} to be promoted",
                lambda s: (s.get("stable") or {}).get("version") == versions[1], timeout=300)
        print(f"      v{versions[1]} promoted {time.perf_counter() - t:.0f}s after the alias moved", flush=True)
        time.sleep(1.0)
        traffic.stop()
        key = f"modelops.deployment.local.{MODEL}"
        tags = {v: dict(client.get_model_version(MODEL, v).tags) for v in versions}
        rows = _story(up.events(), tags, key)
        lost = [r for r in traffic.records if r[1] != 200]
        print()
        print(_table(rows))
        print()
        print(f"client: {len(traffic.records)} texts through the router, {len(lost)} not answered 200")
        print(f"MLflow UI: {tracking}  -> Models -> {MODEL}")
        ok = any(r[2] == "promoted" for r in rows) and not lost and len(traffic.records) > 0
        if keep_running:
            print(f"done in {time.perf_counter() - t0:.0f}s; everything keeps running (Ctrl+C stops it)")
            try:
                while up.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:
            up.down()
            up = None
            print(f"done in {time.perf_counter() - t0:.0f}s (wall time); work dir {work_dir}"
                  + ("" if ok else "  -- SOMETHING WENT WRONG, see above"))
        return 0 if ok else 1
    finally:
        if traffic is not None:
            traffic.stop()
        if up is not None:
            up.down()
        server.stop()
