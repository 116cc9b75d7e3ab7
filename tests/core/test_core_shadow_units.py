"""The shadow comparison (`serving.compare`), the mirror configuration and the mirror's wire
format (`serving.shadow`): pure functions, no server."""

from __future__ import annotations

import numpy as np
import pytest

from modelops.errors import InvalidSpec
from modelops.serving.codec import decode_request
from modelops.serving.compare import compare, differences, min_cosine
from modelops.serving.shadow import ShadowConfig, decode_answer, encode_request, parse_config
from modelops.tensors import TensorSpec

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(5, 3)).astype(np.float32)


# --- compare ------------------------------------------------------------------------------------------
def test_identical_answers_agree_with_zero_differences():
    c = compare({"logits": LOGITS}, {"logits": LOGITS.copy()})
    assert c.outcome == "agree" and c.abs_diff == 0 and c.rel_diff == 0 and c.reason is None


def test_classifier_outputs_agree_on_the_top_class_not_the_numbers():
    shifted = LOGITS + 0.5  # every number off by 0.5, the same argmax
    c = compare({"logits": LOGITS}, {"logits": shifted})
    assert c.outcome == "agree" and c.abs_diff == pytest.approx(0.5)
    swapped = LOGITS[:, [1, 0, 2]]
    moved = (LOGITS.argmax(1) != swapped.argmax(1)).any()
    assert moved and compare({"logits": LOGITS}, {"logits": swapped}).outcome == "disagree"
    assert compare({"logits": LOGITS}, {"logits": swapped}).reason == "top class differs"


def test_one_row_with_another_top_class_is_a_disagreement():
    other = LOGITS.copy()
    other[3] = other[3, [2, 0, 1]] if other[3].argmax() != 1 else other[3, [1, 2, 0]]
    assert other[3].argmax() != LOGITS[3].argmax()
    assert compare({"probabilities": LOGITS}, {"probabilities": other}).outcome == "disagree"


def test_label_outputs_strings_and_integers():
    assert compare({"label": np.array(["pos", "neg"], object)},
                   {"label": np.array(["pos", "neg"], object)}).agree
    assert not compare({"label": np.array(["pos", "neg"], object)},
                       {"label": np.array(["pos", "pos"], object)}).agree
    # sklearn's label (int64) + probabilities: probabilities differ, labels equal: agree
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    c = compare({"label": np.array([0, 1]), "probabilities": probs},
                {"label": np.array([0, 1]), "probabilities": probs + [[-0.1, 0.1], [0.1, -0.1]]})
    assert c.agree and c.abs_diff == pytest.approx(0.1, abs=1e-6)


def test_text_classifier_answer_label_score_scores_logits():
    stable = {"label": np.array(["a", "b"], object), "score": np.array([0.7, 0.6], np.float32),
              "scores": np.array([[0.7, 0.3], [0.4, 0.6]], np.float32), "logits": np.array([[1, 0], [0, 1]], np.float32)}
    cand = {k: v.copy() for k, v in stable.items()}
    cand["score"] = cand["score"] + 0.05
    assert compare(stable, cand).agree
    cand["label"] = np.array(["a", "a"], object)
    assert compare(stable, cand).outcome == "disagree"


def test_regression_outputs_allclose():
    y = rng.normal(size=(4, 1)).astype(np.float32)
    assert compare({"output": y}, {"output": y + 5e-4}, rtol=1e-3, atol=1e-3).agree
    c = compare({"output": y}, {"output": y * 10}, rtol=1e-3, atol=1e-3)
    assert c.outcome == "disagree" and "beyond rtol" in c.reason and c.abs_diff > 0.01


def test_vectors_get_their_min_cosine():
    e = rng.normal(size=(3, 8)).astype(np.float32)
    other = e.copy()
    other[1] = -other[1]
    c = compare({"sentence_embedding": e}, {"sentence_embedding": other})
    assert c.cosine == pytest.approx(-1.0) and c.outcome == "disagree"
    same = compare({"sentence_embedding": e}, {"sentence_embedding": e * 1.0000001})
    assert same.agree and same.cosine == pytest.approx(1.0)
    hidden = rng.normal(size=(2, 5, 8)).astype(np.float32)  # [rows, seq, dim]: every token vector
    assert compare({"last_hidden_state": hidden}, {"last_hidden_state": hidden}).cosine == pytest.approx(1.0)
    assert compare({"logits": LOGITS}, {"logits": LOGITS}).cosine is None  # a classifier, not a vector


def test_min_cosine_zero_vectors():
    z = np.zeros((2, 3))
    assert min_cosine(z, z) == 1.0
    assert min_cosine(z, np.ones((2, 3))) == 0.0


def test_shape_name_and_kind_mismatches_disagree_with_the_reason():
    c = compare({"logits": LOGITS}, {"scores": LOGITS})
    assert c.outcome == "disagree" and "'logits' is missing" in c.reason
    c = compare({"logits": LOGITS}, {"logits": LOGITS[:, :2]})
    assert c.outcome == "disagree" and "shape [5, 3]" in c.reason
    c = compare({"label": np.array([1, 2])}, {"label": np.array(["1", "2"], object)})
    assert c.outcome == "disagree" and "numbers vs" in c.reason
    assert compare({"y": LOGITS}, {"y": LOGITS, "extra": LOGITS}).agree  # extra outputs: ignored


def test_differences_nan_inf_and_zero():
    s = np.array([np.nan, np.inf, 0.0, 2.0])
    assert differences(s, s.copy()) == (0.0, 0.0, True)
    assert differences(np.array([0.0, 2.0]), np.array([0.0, 1.0])) == (1.0, 0.5, False)
    assert differences(np.array([0.0, 2.0]), np.array([0.0, 1.0]), rtol=0, atol=1.0) == (1.0, 0.5, True)
    a, _, close = differences(np.array([np.nan]), np.array([1.0]))
    assert a == np.inf and not close
    assert differences(np.array([np.inf]), np.array([-np.inf]))[:2] == (np.inf, np.inf)
    assert not compare({"y": np.array([[np.nan]])}, {"y": np.array([[1.0]])}).agree


# --- the copies of one call compared in one pass -----------------------------------------------------
def _stacked_case(seed: int):
    """Stable and candidate answers of several copies (1-3 rows each): classifier scores, an
    integer label, a regression output, embeddings and hidden states; some copies identical,
    some a little off, some with another top class or a zero vector."""
    r = np.random.default_rng(seed)
    counts = [int(n) for n in r.integers(1, 4, size=int(r.integers(1, 9)))]
    total = sum(counts)
    stable = {"scores": r.normal(size=(total, 4)).astype(np.float32),
              "label": r.integers(0, 4, size=(total,)),
              "y": r.normal(size=(total, 1)),
              "embedding": r.normal(size=(total, 8)).astype(np.float32),
              "hidden": r.normal(size=(total, 3, 5)).astype(np.float32)}
    cand = {k: v.copy() for k, v in stable.items()}
    for row in range(total):
        how = r.integers(0, 6)
        if how == 1:  # a little off, within and beyond the tolerance
            for k in ("scores", "y", "embedding", "hidden"):
                cand[k][row] += r.normal(scale=float(r.choice([1e-5, 1e-2])), size=cand[k][row].shape)
        elif how == 2:  # another top class
            cand["scores"][row, int(np.argmin(stable["scores"][row]))] += 100
        elif how == 3:
            cand["label"][row] = (cand["label"][row] + 1) % 4
        elif how == 4:  # a zero vector on one side, or on both
            cand["embedding"][row] = 0
            if r.random() < 0.5:
                stable["embedding"][row] = 0
    return stable, cand, counts


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("outputs", [("scores", "label", "y", "embedding", "hidden"), ("y",), ("embedding",),
                                     ("hidden", "y"), ("scores",)])
def test_compare_stacked_is_compare_of_each_copy(seed, outputs):
    from modelops.serving.compare import compare_stacked

    stable, cand, counts = _stacked_case(seed)
    stable, cand = {k: stable[k] for k in outputs}, {k: cand[k] for k in outputs}
    got = compare_stacked(stable, cand, counts, 1e-3, 1e-3)
    bounds = np.cumsum([0, *counts])
    want = [compare({k: v[a:b] for k, v in stable.items()}, {k: v[a:b] for k, v in cand.items()}, 1e-3, 1e-3)
            for a, b in zip(bounds[:-1], bounds[1:])]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.outcome, g.reason) == (w.outcome, w.reason)
        for field in ("abs_diff", "rel_diff", "cosine"):
            gv, wv = getattr(g, field), getattr(w, field)
            assert (gv is None) == (wv is None) and (gv is None or gv == pytest.approx(wv, rel=1e-12, abs=1e-15)), field


def test_compare_stacked_leaves_what_it_does_not_cover_to_compare():
    from modelops.serving.compare import compare_stacked

    y = np.ones((3, 2))
    assert compare_stacked({"y": y}, {"y": y}, [1, 2]) is not None
    for stable, cand in (({"y": y}, {}),  # missing
                         ({"y": y}, {"y": np.ones((3, 3))}),  # another shape
                         ({"y": np.array([[np.nan, 1]] * 3)}, {"y": y}),  # not finite
                         ({"label": np.array(["a", "b", "c"], object)}, {"label": np.array(["a", "b", "c"], object)}),
                         ({}, {})):
        assert compare_stacked(stable, cand, [1, 2]) is None


# --- configuration ------------------------------------------------------------------------------------
FULL = ('{"candidate": {"url": "http://cand:8080", "model": "m", "version": "3"}, "percent": 25, '
        '"queueSize": 8, "timeoutMs": 500, "tolerance": {"rtol": 1e-2, "atol": 1e-4}}')


def test_config_full_and_defaults():
    assert parse_config(FULL) == ShadowConfig("http://cand:8080", "m", "3", 25.0, 8, 0.5, 1e-2, 1e-4)
    d = parse_config('{"candidate": {"url": "http://c/", "model": "m", "version": 4}}')
    assert d == ShadowConfig("http://c/", "m", "4") and d.infer_url == "http://c/v2/models/m/infer"
    assert (d.percent, d.queue_size, d.timeout_s, d.rtol, d.atol) == (10.0, 64, 2.0, 1e-3, 1e-3)


@pytest.mark.parametrize("text", ["", "  \n", "{}", '{"candidate": {"url": "http://c", "model": "m"}, "percent": 0}'])
def test_config_off(text):
    assert parse_config(text) is None


@pytest.mark.parametrize("text, field", [
    ("[1]", "shadow config"), ("{bad", "shadow config"), ('{"percent": 5}', "candidate"),
    ('{"candidate": {"url": "cand:80", "model": "m"}}', "candidate.url"),
    ('{"candidate": {"url": "http://c", "model": ""}}', "candidate.model"),
    ('{"candidate": {"url": "http://c", "model": "m"}, "percent": 101}', "percent"),
    ('{"candidate": {"url": "http://c", "model": "m"}, "percent": true}', "percent"),
    ('{"candidate": {"url": "http://c", "model": "m"}, "queueSize": 1.5}', "queueSize"),
    ('{"candidate": {"url": "http://c", "model": "m"}, "timeoutMs": 0}', "timeoutMs"),
    ('{"candidate": {"url": "http://c", "model": "m"}, "tolerance": {"rtol": -1}}', "tolerance.rtol"),
])
def test_config_invalid_names_the_field(text, field):
    with pytest.raises(InvalidSpec) as exc:
        parse_config(text)
    assert exc.value.field == field


# --- wire ---------------------------------------------------------------------------------------------
def test_mirror_request_is_a_valid_v2_request_with_the_same_values():
    feeds = {"x": rng.normal(size=(2, 4)).astype(np.float32), "ids": np.array([[1, -2, 3]] * 2, np.int64),
             "flag": np.array([[True], [False]]), "h": np.array([[0.5, -1.25]] * 2, np.float16),
             "text": np.array(["héllo", "wörld"], object).reshape(2, 1)}
    specs = [TensorSpec(n, a.dtype, (-1, a.shape[1])) for n, a in feeds.items()]
    body, headers = encode_request(feeds)
    assert headers["content-type"] == "application/octet-stream"
    decoded = decode_request(body, specs, ["y"], int(headers["inference-header-content-length"]))
    for name, arr in feeds.items():
        assert decoded.feeds[name].dtype == arr.dtype and np.array_equal(decoded.feeds[name], arr), name
    assert decoded.binary == {"y"}  # the candidate answers in binary too
    text_only, headers = encode_request({"text": feeds["text"]})  # nothing binary: plain JSON
    assert headers == {"content-type": "application/json"}
    assert decode_request(text_only, specs[-1:], ["y"]).feeds["text"].tolist() == [["héllo"], ["wörld"]]


def test_mirror_request_non_finite_floats_go_as_they_are():
    x = np.array([[np.nan, np.inf, 1.0, -np.inf]], np.float32)
    body, headers = encode_request({"x": x})
    n = int(headers["inference-header-content-length"])
    got = decode_request(body, [TensorSpec("x", x.dtype, (-1, 4))], ["y"], n).feeds["x"]
    assert got.tobytes() == x.tobytes()


def test_decode_answer_json_and_binary_and_garbage():
    doc = (b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[2,1],"data":[1.5,2]},'
           b'{"name":"label","datatype":"BYTES","shape":[2],"data":["a","b"]}]}')
    out = decode_answer(doc)
    assert out["y"].dtype == np.float32 and out["y"].tolist() == [[1.5], [2.0]]
    assert out["label"].tolist() == ["a", "b"]
    head = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}'
    out = decode_answer(head + np.array([1, 2], np.float32).tobytes(),
                        {"inference-header-content-length": str(len(head))})
    assert out["y"].tolist() == [1.0, 2.0]
    for bad in (b"nope", b'{"outputs": 3}', b'{"outputs":[{"name":"y","datatype":"FP99","shape":[1],"data":[1]}]}',
                b'{"outputs":[{"name":"y","datatype":"FP32","shape":[3],"data":[1]}]}'):
        with pytest.raises(ValueError, match="not a V2 infer response"):
            decode_answer(bad)


# --- stacked copies: one call to the candidate for the copies queued together -----------------------
def test_stack_groups_only_numeric_copies_with_one_batch_axis_go_together():
    from modelops.serving.shadow_wire import stack_groups

    def copy(shape, dtype=np.float32, out_rows=None):
        x = np.ones(shape, dtype)
        return {"input": x}, {"logits": np.ones(((out_rows if out_rows is not None else shape[0]), 3))}

    a, b, wider = copy((1, 4)), copy((2, 4)), copy((1, 5))
    text = ({"text": np.array(["a"], dtype=object)}, {"logits": np.ones((1, 3))})
    odd = copy((2, 4), out_rows=1)  # its answer has not one row per input row
    groups = stack_groups([a, b, wider, text, odd, a])
    assert [len(g) for g in groups] == [3, 1, 1, 1]
    assert groups[0] == [a, b, a]  # queue order kept


def test_split_rows_cuts_a_stacked_answer_back_or_says_it_cannot():
    from modelops.serving.shadow_wire import split_rows

    answer = {"logits": np.arange(12).reshape(4, 3), "label": np.array([0, 1, 2, 0])}
    parts = split_rows(answer, [1, 2, 1])
    assert [p["logits"].shape for p in parts] == [(1, 3), (2, 3), (1, 3)]
    assert parts[1]["label"].tolist() == [1, 2] and parts[2]["logits"].tolist() == [[9, 10, 11]]
    assert split_rows(answer, [1, 2]) is None and split_rows({"n": np.array(3)}, [1]) is None


class FakeCandidate:
    """The candidate's side of the wire, for the mirror's calls: answers logits = 2 * input[:, :3]
    per row and records each call's rows; `refuse_stacked`: 400 to any call of more than one
    request's rows; `one_row`: answers a single row whatever was asked."""

    def __init__(self, refuse_stacked=False, one_row=False, status=200):
        self.calls: list[int] = []
        self.refuse_stacked, self.one_row, self.status = refuse_stacked, one_row, status

    async def start(self) -> str:
        """Serve on a free loopback port; the base URL."""
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v2/models/clf/infer", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        await self.runner.cleanup()

    async def handle(self, request):
        from aiohttp import web

        body, n = await request.read(), request.headers.get("inference-header-content-length")
        x = decode_request(body, [TensorSpec("input", np.dtype(np.float32), (-1, 4))], ["logits"],
                           None if n is None else int(n)).feeds["input"]
        self.calls.append(x.shape[0])
        if self.status != 200:
            return web.json_response({"error": f"refused with {self.status}"}, status=self.status)
        if self.refuse_stacked and x.shape[0] > 2:
            return web.json_response({"error": "no"}, status=400)
        y = 2 * x[:, :3]
        if self.one_row:
            y = y[:1]
        return web.json_response({"outputs": [{"name": "logits", "datatype": "FP32", "shape": list(y.shape),
                                               "data": y.ravel().tolist()}]})


@pytest.mark.parametrize("refuse_stacked, one_row", [(False, False), (True, False), (False, True)])
def test_queued_copies_go_in_one_call_and_are_each_compared(refuse_stacked, one_row):
    import asyncio

    from modelops.serving.shadow import MAX_COPIES_PER_CALL, _Generation

    async def scenario():
        fake = FakeCandidate(refuse_stacked, one_row)
        url = await fake.start()
        version = f"stack-{refuse_stacked}-{one_row}"
        gen = _Generation(ShadowConfig(url, "clf", version, 100.0, 64), "clf", "1")
        rng = np.random.default_rng(3)
        copies = []
        for i in range(12):  # queued before any worker runs: the first worker takes them together
            x = rng.normal(size=(1 + i % 2, 4)).astype(np.float32)
            stable = 2 * x[:, :3]
            if i == 4:  # the stable answered another top class for this one (one row)
                stable[:, int(np.argmin(stable[0]))] += 100
            copies.append(({"input": x}, {"logits": stable}))
            gen.queue.put_nowait(copies[-1])
        try:
            for _ in range(200):
                done = gen.agree._value.get() + gen.disagree._value.get()
                if done >= 12:
                    break
                await asyncio.sleep(0.02)
            return fake.calls, gen.agree._value.get(), gen.disagree._value.get(), gen.sent._value.get(), \
                gen.failed._value.get()
        finally:
            await gen.close()
            await fake.close()

    calls, agree, disagree, sent, failed = asyncio.run(scenario())
    # each copy judged on its own rows; a candidate that answers one row agrees on 1-row copies only
    assert (agree, disagree, sent, failed) == ((5, 7, 12, 0) if one_row else (11, 1, 12, 0))
    assert calls[0] == 18 and MAX_COPIES_PER_CALL >= 12  # 12 copies, 18 rows, in the first call
    if refuse_stacked or one_row:  # then copy by copy, each as the client's request was
        assert sorted(calls[1:]) == sorted(1 + i % 2 for i in range(12))
    else:
        assert len(calls) == 1


@pytest.mark.parametrize("status, outcome", [(400, "disagree"), (404, "disagree"), (413, "disagree"),
                                             (500, "disagree"), (501, "disagree"),
                                             (401, "failed"), (403, "failed"), (429, "failed"), (502, "failed"),
                                             (503, "failed"), (504, "failed")])
def test_a_candidate_refusing_what_the_stable_answered_disagrees(status, outcome):
    """A 4xx or a 500 to a copy the stable answered is the model's difference (a client would
    have got it): a disagreement with the reason; auth, timeout and throttling answers and 502,
    503 and 504 (down, overloaded, a gateway) say something about the call: failed copies,
    never comparisons."""
    import asyncio

    from modelops.serving.shadow import _Generation

    async def scenario():
        fake = FakeCandidate(status=status)
        url = await fake.start()
        gen = _Generation(ShadowConfig(url, "clf", f"refuse-{status}", 100.0, 64), "clf", "1")
        x = np.ones((1, 4), np.float32)
        for _ in range(5):
            gen.queue.put_nowait(({"input": x}, {"logits": 2 * x[:, :3]}))
        try:
            for _ in range(200):
                if gen.disagree._value.get() + gen.failed._value.get() >= 5:
                    break
                await asyncio.sleep(0.02)
            return {k: getattr(gen, k)._value.get() for k in ("sent", "agree", "disagree", "failed")}, fake.calls
        finally:
            await gen.close()
            await fake.close()

    counted, calls = asyncio.run(scenario())
    assert calls[0] == 5 and sorted(calls[1:]) == [1] * 5  # stacked, refused, then copy by copy
    if outcome == "disagree":
        assert counted == {"sent": 5, "agree": 0, "disagree": 5, "failed": 0}
    else:
        assert counted == {"sent": 0, "agree": 0, "disagree": 0, "failed": 5}
