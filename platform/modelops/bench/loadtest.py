"""`modelops loadtest URL --model NAME`: the performance gate's measurement of one predictor.

A bounded closed-loop load test (`loadgen`: CONCURRENCY clients sending back to back for
DURATION seconds) of `URL/v2/models/NAME/infer`, with requests built from the model's V2 metadata
(`GET /v2/models/NAME`: inputs, datatypes, shapes; -1 dims as 1; numbers and words seeded) or a
body file. The result document (the rollout's contract; also the Job's termination message):

    {"url": "...", "model": "m", "concurrency": 4, "duration_s": 20, "requests": 812, "errors": 0,
     "throughput_rps": 40.6, "p50_ms": 9.8, "p99_ms": 21.3}

(`first_error` when errors > 0: what the first failed request got). Judging it is the engine's
job; an unreachable target is `PredictorUnreachable` (the CLI exits 75), a model it does not
serve `UnknownModel`.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import numpy as np

from ..errors import InvalidSpec, ModelNotReady, ModelOpsError, PredictorUnreachable, UnknownModel
from ..tensors import V2_TO_NUMPY
from ..words import random_text
from .loadgen import run_load_async

TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
BODIES = 8  # distinct seeded requests, sent in turn


def infer_url(url: str, model: str) -> str:
    return f"{url.rstrip('/')}/v2/models/{model}/infer"


async def fetch_metadata(url: str, model: str, timeout: float = 10.0, headers: dict | None = None) -> dict:
    """The model's V2 metadata; PredictorUnreachable / UnknownModel / ModelNotReady saying why not."""
    import httpx

    where = f"{url.rstrip('/')}/v2/models/{model}"
    try:
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
            resp = await client.get(where)
    except httpx.HTTPError as exc:
        raise PredictorUnreachable(f"{where}: {type(exc).__name__}: {exc}"[:500]) from None
    if resp.status_code == 404:
        raise UnknownModel(f"{where}: 404: {resp.text[:300]}")
    if resp.status_code == 503:
        raise ModelNotReady(f"{where}: 503: {resp.text[:300]}")
    if resp.status_code != 200:
        raise PredictorUnreachable(f"{where}: HTTP {resp.status_code}: {resp.text[:300]}")
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise PredictorUnreachable(f"{where}: not V2 model metadata: {resp.text[:200]}")
    return doc


def request_from_metadata(metadata: dict, seed: int = 0) -> bytes:
    """One V2 request for the inputs METADATA lists: -1 dims as 1, seeded values (floats
    normal(0, 1), integers 0..9, booleans, BYTES a few seeded words)."""
    rng, words = np.random.default_rng(seed), random.Random(seed)
    inputs = []
    for item in metadata["inputs"]:
        name, datatype = item.get("name"), item.get("datatype")
        if datatype not in V2_TO_NUMPY or not isinstance(item.get("shape"), list):
            raise InvalidSpec("--from-metadata", f"input {name!r}: cannot build data for {datatype} {item.get('shape')}")
        shape = [1 if d is None or d < 0 else int(d) for d in item["shape"]]
        size = int(np.prod(shape)) if shape else 1
        dtype = V2_TO_NUMPY[datatype]
        if dtype.kind == "f":
            data = np.round(rng.standard_normal(size), 4).tolist()
        elif dtype.kind in "iu":
            data = rng.integers(0, 10, size).tolist()
        elif dtype.kind == "b":
            data = rng.integers(0, 2, size).astype(bool).tolist()
        else:
            data = [random_text(words, 3, 24) for _ in range(size)]
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    return json.dumps({"inputs": inputs}).encode()


def document(url: str, model: str, result, duration: float) -> dict:
    doc = {"url": url, "model": model, "concurrency": result.concurrency, "duration_s": duration,
           "requests": result.requests, "errors": result.errors,
           "throughput_rps": round(result.requests / result.seconds, 1) if result.seconds else 0.0,
           "p50_ms": round(result.p50_ms, 3), "p99_ms": round(result.p99_ms, 3)}
    if result.errors and result.first_error:
        doc["first_error"] = result.first_error[:300]
    return doc


async def loadtest_async(url: str, model: str, *, concurrency: int = 4, duration: float = 20.0,
                         body: bytes | None = None, timeout: float = 10.0, warmup: int | None = None,
                         headers: dict | None = None) -> dict:
    """Run the load test (in a running event loop: local mode runs it in process)."""
    if not 1 <= concurrency <= 1024:
        raise InvalidSpec("--concurrency", f"must be 1..1024, got {concurrency}")
    if not 0 < duration <= 3600:
        raise InvalidSpec("--duration", f"must be more than 0 and at most 1h, got {duration:g}s")
    metadata = await fetch_metadata(url, model, timeout, headers)  # reachable, serving MODEL
    bodies = [body] if body is not None else [request_from_metadata(metadata, seed) for seed in range(BODIES)]
    result = await run_load_async(infer_url(url, model), bodies, {"content-type": "application/json", **(headers or {})},
                                  concurrency, 10**9, duration, 2 * concurrency if warmup is None else warmup,
                                  timeout)
    return document(url, model, result, duration)


def loadtest(url: str, model: str, **kwargs) -> dict:
    return asyncio.run(loadtest_async(url, model, **kwargs))


def fit(doc: dict, limit: int = TERMINATION_LOG_LIMIT) -> str:
    """DOC as one JSON line within LIMIT bytes (first_error / error shortened, then dropped); a
    `--baseline` document's two parts get half the room each."""
    parts = [k for k in ("stable", "candidate") if isinstance(doc.get(k), dict)]
    if parts:
        room = (limit - 200) // 2
        doc = {**doc, **{k: json.loads(fit(doc[k], room)) for k in parts}}
    text = json.dumps(doc)
    for key in ("first_error", "error"):
        if len(text.encode()) > limit and key in doc:
            doc = {**doc, key: doc[key][:200]}
            text = json.dumps(doc)
        if len(text.encode()) > limit and key in doc:
            doc = {k: v for k, v in doc.items() if k != key}
            text = json.dumps(doc)
    if len(text.encode()) > limit:
        doc = {**doc, "url": doc.get("url", "")[:200]}
        text = json.dumps(doc)
    return text


def write_termination_log(path: str | Path, doc: dict) -> None:
    Path(path).write_text(fit(doc))


# --- the command line (`modelops loadtest`, parser in `modelops.cli`) ------------------------------------
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str, flag: str) -> float:
    """`20s`, `500ms`, `1m30s` or a number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    if not _DURATION.match(text.strip()):
        raise InvalidSpec(flag, f"{text!r} is not a duration such as 20s, 500ms or 1m")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidSpec(flag, f"cannot read {path}: {exc.strerror or exc}") from None


def _headers(args) -> dict:
    headers = {}
    for h in args.header or []:
        key, sep, value = h.partition(":")
        if not sep or not key.strip():
            raise InvalidSpec("--header", f"{h!r} is not 'Name: value'")
        headers[key.strip()] = value.strip()
    if args.bearer_token_file:
        token = _read(args.bearer_token_file, "--bearer-token-file").decode().strip()
        headers["authorization"] = f"Bearer {token}"
    return headers


def _one(url: str, args, body: bytes | None) -> dict:
    return loadtest(url, args.model, concurrency=args.concurrency, duration=seconds(args.duration, "--duration"),
                    body=body, timeout=seconds(args.timeout, "--timeout"), warmup=args.warmup, headers=_headers(args))


def _line(doc: dict) -> str:
    return (f"{doc['url']} {doc['model']}: {doc['requests']} requests, {doc['errors']} errors in "
            f"{doc['duration_s']:g}s at concurrency {doc['concurrency']}: {doc['throughput_rps']} req/s, "
            f"p50 {doc['p50_ms']} ms, p99 {doc['p99_ms']} ms"
            + (f"; first error: {doc['first_error']}" if doc.get("first_error") else ""))


def run_cli(args) -> int:
    """Print the document (JSON with --json); 0 when the test ran, whatever it measured. A failure
    to run raises (the CLI prints `modelops: Reason: message`), after writing it to --termination-log.

    `--baseline URL2`: the same test against URL2 first (the serving version), then URL (the
    candidate); the document is `{"stable": <URL2's>, "candidate": <URL's>}` (the performance
    gate's Job: one container, one termination message)."""
    baseline = getattr(args, "baseline", None)
    doc: dict = {"url": args.url, "model": args.model}
    try:
        body = _read(args.body, "--body") if args.body else None
        if baseline:
            doc = {"stable": {"url": baseline, "model": args.model}}
            doc["stable"] = _one(baseline, args, body)
            doc["candidate"] = {"url": args.url, "model": args.model}
            doc["candidate"] = _one(args.url, args, body)
        else:
            doc = _one(args.url, args, body)
    except ModelOpsError as exc:
        if args.termination_log:
            write_termination_log(args.termination_log, {**doc, "error": str(exc), "reason": exc.reason})
        raise
    if args.termination_log:
        write_termination_log(args.termination_log, doc)
    if args.json:
        print(json.dumps(doc))
    elif baseline:
        print(f"stable    {_line(doc['stable'])}\ncandidate {_line(doc['candidate'])}")
    else:
        print(_line(doc))
    return 0
