"""Text models behind `modelops serve` (a child process, real HTTP and gRPC): a seeded tiny BERT
classifier, a SentenceTransformer (pooling + normalisation in the graph) and its encoder as a
feature-extraction model, each exported here (`text_artifacts`, no converter, nothing downloaded).

Answers are checked against the Hugging Face originals in this process (pipeline(texts,
truncation=True), SentenceTransformer.encode, the encoder's last_hidden_state) within 1e-4, over
every protocol (V2 REST JSON and binary, gRPC typed and raw, v1 instances, the token-id tensors,
OpenAI embeddings), under concurrent requests of mixed lengths (sequence-aware batching), and
malformed requests get a 4xx naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

import text_artifacts as ta
from modelops.words import WORDS, seeded_texts
from modelops.serving.batching import BatchingConfig, DynamicBatcher, SequenceAxes
from test_core_serving import Predictor, metric_value

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:Converting a tensor")]

TOL = dict(rtol=1e-4, atol=1e-4)
LONG = " ".join(WORDS[i % len(WORDS)] for i in range(300))  # 300 words: truncated to max_length
TEXTS = seeded_texts(6, seed=3) + ["", LONG]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-models")
    cls_dir, pipe = ta.classifier_dir(root / "cls")
    st_dir, st = ta.sentence_embedding_dir(root / "st")
    fe_dir = ta.feature_extraction_dir(root / "fe", st)
    return {"cls": (cls_dir, pipe), "st": (st_dir, st), "fe": (fe_dir, st)}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("text-logs")


@pytest.fixture(scope="module")
def cls_server(artifacts, logs):
    server = Predictor(artifacts["cls"][0], "cls", logs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def st_server(artifacts, logs):
    server = Predictor(artifacts["st"][0], "st", logs, "--audit", "on")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fe_server(artifacts, logs):
    server = Predictor(artifacts["fe"][0], "fe", logs)
    yield server
    server.stop()


def expected_labels(pipe, texts):
    return pipe(list(texts), truncation=True)


def assert_classified(outputs: dict, pipe, texts):
    want = expected_labels(pipe, texts)
    assert list(outputs["label"]) == [w["label"] for w in want]
    np.testing.assert_allclose(np.asarray(outputs["score"], np.float32), [w["score"] for w in want], **TOL)


def text_input(texts, **extra) -> dict:
    return {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts), **extra}


def v2_outputs(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def hidden_states(st, text: str) -> np.ndarray:
    import torch

    tok = st.tokenizer(text, truncation=True, max_length=st.max_seq_length, return_tensors="pt")
    with torch.no_grad():
        return st[0].auto_model(**tok).last_hidden_state[0].numpy()


def grpc_infer(server, request):
    with grpc.insecure_channel(server.grpc_url) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def lp(texts) -> bytes:
    """BYTES on the wire: 4-byte little-endian length, then the UTF-8 bytes."""
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


# --- V2 text ---------------------------------------------------------------------------------------------
def test_metadata_has_the_text_input(cls_server):
    doc = cls_server.http.get("/v2/models/cls").json()
    assert doc["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in doc["outputs"]] == ["label", "score", "scores", "logits"]
    assert doc["outputs"][0]["datatype"] == "BYTES" and doc["outputs"][2]["shape"] == [-1, 3]


def test_v2_rest_text_is_the_pipelines_answer(cls_server, artifacts):
    pipe = artifacts["cls"][1]
    out = v2_outputs(cls_server.infer({"inputs": [text_input(TEXTS)]}))
    assert_classified(out, pipe, TEXTS)
    assert out["scores"].shape == (len(TEXTS), 3)
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, **TOL)
    only = v2_outputs(cls_server.infer({"inputs": [text_input(["good"])], "outputs": [{"name": "label"}]}))
    assert list(only) == ["label"]


def test_v2_binary_extension_bytes(cls_server, artifacts):
    blob = lp(TEXTS)
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)],
                                   "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": [{"name": "label"}, {"name": "score", "parameters": {"binary_data": True}}]}).encode()
    r = cls_server.infer(head + blob, headers={"Inference-Header-Content-Length": str(len(head)),
                                               "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:n])
    labels = doc["outputs"][0]["data"]
    score = np.frombuffer(r.content[n:], np.float32)
    assert_classified({"label": labels, "score": score}, artifacts["cls"][1], TEXTS)


def test_grpc_bytes_text(cls_server, artifacts):
    pipe = artifacts["cls"][1]
    req = pb.ModelInferRequest(model_name="cls")
    t = req.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    t.contents.bytes_contents.extend([s.encode() for s in TEXTS])
    res = grpc_infer(cls_server, req)
    out = {o.name: o for o in res.outputs}
    assert_classified({"label": [b.decode() for b in out["label"].contents.bytes_contents],
                       "score": list(out["score"].contents.fp32_contents)}, pipe, TEXTS)
    raw = pb.ModelInferRequest(model_name="cls", raw_input_contents=[lp(TEXTS[:3])])
    raw.inputs.add(name="text", datatype="BYTES", shape=[3])
    raw.outputs.add(name="score")
    res = grpc_infer(cls_server, raw)
    np.testing.assert_allclose(np.frombuffer(res.raw_output_contents[0], np.float32),
                               [w["score"] for w in expected_labels(pipe, TEXTS[:3])], **TOL)


def test_v1_instances_like_the_pipeline(cls_server, st_server, artifacts):
    r = cls_server.http.post("/v1/models/cls:predict", json={"instances": TEXTS})
    assert r.status_code == 200, r.text
    got, want = r.json()["predictions"], expected_labels(artifacts["cls"][1], TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], **TOL)
    r = st_server.http.post("/v1/models/st:predict", json={"instances": TEXTS[:3]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], artifacts["st"][1].encode(TEXTS[:3]), **TOL)


def test_token_id_tensors_go_straight_to_the_graph(cls_server, artifacts):
    import torch

    pipe = artifacts["cls"][1]
    enc = pipe.tokenizer(TEXTS[:3], padding=True, truncation=True, return_tensors="np")
    inputs = [{"name": n, "datatype": "INT64", "shape": list(enc[n].shape), "data": enc[n].ravel().tolist()}
              for n in ta.INPUTS]
    out = v2_outputs(cls_server.infer({"inputs": inputs}))
    assert list(out) == ["logits"]
    with torch.no_grad():
        want = pipe.model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(out["logits"], want, **TOL)


def test_feature_extraction_keeps_each_texts_own_length(fe_server, artifacts):
    st = artifacts["fe"][1]
    out = v2_outputs(fe_server.infer({"inputs": [text_input(["good", "the movie was not very good"])]}))
    hidden = out["last_hidden_state"]
    assert hidden.shape[:2] == (2, len(st.tokenizer("the movie was not very good")["input_ids"]))
    np.testing.assert_allclose(hidden[0, :3], hidden_states(st, "good"), **TOL)
    r = fe_server.http.post("/v1/models/fe:predict", json={"instances": ["good", "bad movie"]})
    preds = r.json()["predictions"]
    assert [len(p) for p in preds] == [3, 4]
    np.testing.assert_allclose(preds[1], hidden_states(st, "bad movie"), **TOL)


# --- sequence-aware batching --------------------------------------------------------------------------------
def _submit_all(batcher, requests: list) -> list:
    """Submit REQUESTS concurrently (they queue together), close the batcher, return the answers."""
    async def main():
        return await asyncio.gather(*(batcher.submit(f) for f in requests))

    try:
        return asyncio.run(main())
    finally:
        batcher.close()


def test_batcher_pads_to_the_longest_cuts_back_and_bounds_the_padding():
    calls, ratios = [], []

    def run(feeds):
        calls.append({k: v.copy() for k, v in feeds.items()})
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        return [(ids * 2).astype(np.float32)[..., None], (ids * mask).sum(axis=1)]

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=64, max_wait_ms=20),
                             sequence=SequenceAxes({"input_ids": 9, "attention_mask": 0}, frozenset({0})),
                             on_padding=ratios.append)
    shapes = [(1, 3), (2, 4), (1, 5), (1, 40)]  # the 40-token one would make the batch > 2x padding
    requests = [{"input_ids": np.arange(1, r * w + 1, dtype=np.int64).reshape(r, w),
                 "attention_mask": np.ones((r, w), np.int64)} for r, w in shapes]

    results = _submit_all(batcher, requests)
    assert [c["input_ids"].shape for c in calls] == [(4, 5), (1, 40)]
    first = calls[0]
    assert (first["input_ids"][0, 3:] == 9).all() and (first["attention_mask"][0, 3:] == 0).all()
    assert (first["attention_mask"][1:3, 4:] == 0).all() and first["attention_mask"][3].all()
    assert ratios == [20 / 16, 1.0]
    for feeds, (seq, total) in zip(requests, results):
        np.testing.assert_array_equal(seq[..., 0], feeds["input_ids"] * 2)  # own rows, own length
        np.testing.assert_array_equal(total, feeds["input_ids"].sum(axis=1))


def test_batcher_groups_requests_of_similar_length():
    """Length buckets: short requests share a call, long ones another; no 5-token request is
    padded to 200, and the oldest request is always in the next call."""
    calls = []

    def run(feeds):
        calls.append(feeds["input_ids"].shape)
        return [feeds["input_ids"].astype(np.float32)]

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=64, max_wait_ms=20),
                             sequence=SequenceAxes({"input_ids": 0, "attention_mask": 0}, frozenset({0})))
    widths = [5, 200, 6, 210, 7, 190, 5]
    requests = [{"input_ids": np.ones((1, w), np.int64), "attention_mask": np.ones((1, w), np.int64)}
                for w in widths]

    results = _submit_all(batcher, requests)
    assert sorted(calls) == [(3, 210), (4, 7)]
    assert calls[0] == (4, 7), "the oldest request (5 tokens) goes first, with the other short ones"
    assert [r[0].shape for r in results] == [(1, w) for w in widths]


def _burst(server, bodies):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post(f"/v2/models/{server.name}/infer", json=b) for b in bodies))
    return asyncio.run(main())


def test_concurrent_mixed_lengths_equal_the_original(cls_server, artifacts):
    pipe = artifacts["cls"][1]
    before = cls_server.metrics()
    calls0 = metric_value(before, "modelops_predictor_batch_padding_ratio_count", model="cls")
    groups = [seeded_texts(1 + i % 3, seed=100 + i, max_words=5 + (i * 7) % 40) for i in range(48)]
    responses = _burst(cls_server, [{"inputs": [text_input(g)]} for g in groups])
    for g, r in zip(groups, responses):
        assert_classified(v2_outputs(r), pipe, g)
    after = cls_server.metrics()
    calls = metric_value(after, "modelops_predictor_batch_padding_ratio_count", model="cls") - calls0
    rows = metric_value(after, "modelops_predictor_batch_rows_sum", model="cls") - \
        metric_value(before, "modelops_predictor_batch_rows_sum", model="cls")
    assert 0 < calls < 48, "48 concurrent requests should share onnxruntime calls"
    assert rows == sum(len(g) for g in groups)
    within = metric_value(after, "modelops_predictor_batch_padding_ratio_bucket", model="cls", le="1.25") - \
        metric_value(before, "modelops_predictor_batch_padding_ratio_bucket", model="cls", le="1.25")
    assert within == calls, "padding is bounded to 1.25x the requests' own tokens"


def test_concurrent_feature_extraction_cut_to_own_length(fe_server, artifacts):
    st = artifacts["fe"][1]
    texts = [" ".join(seeded_texts(1, seed=200 + i, min_words=1 + i, max_words=1 + i)) for i in range(16)]
    responses = _burst(fe_server, [{"inputs": [text_input([t])]} for t in texts])
    for t, r in zip(texts, responses):
        hidden = v2_outputs(r)["last_hidden_state"][0]
        np.testing.assert_allclose(hidden, hidden_states(st, t), **TOL)


# --- OpenAI embeddings ---------------------------------------------------------------------------------------
def embeddings(server, **body) -> httpx.Response:
    return server.http.post("/openai/v1/embeddings", json=body)


def test_openai_embeddings_equal_sentence_transformers(st_server, artifacts):
    st = artifacts["st"][1]
    texts = TEXTS[:4] + [""]
    r = embeddings(st_server, model="st", input=texts)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == "st"
    assert [d["index"] for d in doc["data"]] == list(range(len(texts)))
    assert {d["object"] for d in doc["data"]} == {"embedding"}
    want = st.encode(texts)
    np.testing.assert_allclose([d["embedding"] for d in doc["data"]], want, **TOL)
    tokens = sum(len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"])
    assert doc["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    r = embeddings(st_server, model="st", input=texts[0], encoding_format="base64")
    assert r.status_code == 200, r.text
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vec, want[0], **TOL)
    assert len(r.json()["data"]) == 1


def test_openai_feature_extraction_is_mean_pooled(fe_server, artifacts):
    st = artifacts["fe"][1]
    r = embeddings(fe_server, model="fe", input=["good movie", "bad"])
    assert r.status_code == 200, r.text
    got = [d["embedding"] for d in r.json()["data"]]
    np.testing.assert_allclose(got, [hidden_states(st, t).mean(axis=0) for t in ["good movie", "bad"]], **TOL)


@pytest.mark.parametrize("body, status, param, fragment", [
    ({"model": "nope", "input": "hi"}, 404, "model", "not found"),
    ({"model": "st", "input": [1, 2, 3]}, 400, "input", "not a string"),
    ({"model": "st", "input": []}, 400, "input", "non-empty"),
    ({"model": "st"}, 400, "input", "required"),
    ({"input": "hi"}, 400, "model", "model"),
    ({"model": "st", "input": "hi", "encoding_format": "int8"}, 400, "encoding_format", "base64"),
])
def test_openai_errors_in_openais_shape(st_server, body, status, param, fragment):
    r = embeddings(st_server, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and fragment in err["message"] and err["type"] == "invalid_request_error"


def test_openai_refuses_a_classifier(cls_server):
    r = embeddings(cls_server, model="cls", input="hi")
    assert r.status_code == 400, r.text
    assert "not an embedding model" in r.json()["error"]["message"]


def test_openai_models_metrics_and_audit(st_server):
    doc = st_server.http.get("/openai/v1/models").json()
    assert doc["object"] == "list"
    (model,) = doc["data"]
    assert model["id"] == "st" and model["object"] == "model" and isinstance(model["created"], int)
    assert model["owned_by"]
    assert embeddings(st_server, model="st", input="good").status_code == 200
    text = st_server.metrics()
    assert metric_value(text, "modelops_predictor_requests_total", model="st", protocol="openai", code="200") >= 1
    assert metric_value(text, "modelops_predictor_request_seconds_count", model="st", protocol="openai") >= 1
    lines = [json.loads(x) for x in st_server.log().splitlines() if x.startswith('{"time"')]
    assert any(x["route"] == "POST /openai/v1/embeddings" and x["status"] == 200 and x["model"] == "st"
               for x in lines)


# --- malformed -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inputs, fragment", [
    ([text_input(["ok", 3])], "input 'text': element 1 is an integer"),
    ([{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}], "input 'text': datatype FP32"),
    ([{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["one"]}], "input 'text': shape [2] needs 2"),
    ([{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["one"]}], "input 'text': shape [1, 1] has rank 2"),
    ([{"name": "input_ids", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}], "input 'input_ids': datatype"),
    ([{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [2, 3]}], "missing model inputs"),
    ([{"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [2, 9, 3]},
      {"name": "attention_mask", "datatype": "INT64", "shape": [1, 4], "data": [1, 1, 1, 1]},
      {"name": "token_type_ids", "datatype": "INT64", "shape": [1, 3], "data": [0, 0, 0]}],
     "input 'attention_mask': shape [1, 4] differs from 'input_ids' [1, 3]"),
    ([{"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [2, -1, 3]},
      {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": [1, 1, 1]},
      {"name": "token_type_ids", "datatype": "INT64", "shape": [1, 3], "data": [0, 0, 0]}],
     "input 'input_ids': token ids must be in [0, "),
])
def test_malformed_text_requests_name_the_field(cls_server, inputs, fragment):
    r = cls_server.infer({"inputs": inputs})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_malformed_bytes_over_grpc_and_v1(cls_server):
    req = pb.ModelInferRequest(model_name="cls", raw_input_contents=[b"\xff\x00\x00\x00ab"])
    req.inputs.add(name="text", datatype="BYTES", shape=[1])
    with pytest.raises(grpc.RpcError) as exc:
        grpc_infer(cls_server, req)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'text'" in exc.value.details()
    r = cls_server.http.post("/v1/models/cls:predict", json={"instances": ["ok", 1]})
    assert r.status_code == 400 and "element 1" in r.text
    assert cls_server.alive()
