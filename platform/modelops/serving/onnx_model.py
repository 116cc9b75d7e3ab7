"""The predictor's model: an onnxruntime session behind the `kserve.Model` interface.

A directory with text.json is a text model (`text_model.TextServing`): texts in (V2 BYTES
`text`, v1 `instances` of strings, OpenAI embeddings), tokenized here, batched across requests
of different lengths (`batching.SequenceAxes`), answered as the Hugging Face pipeline does."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from ..artifacts import check_onnx, check_tree
from ..errors import InferenceFailed, InvalidRequest, ModelOpsError
from ..tensors import TensorSpec
from ..text import TEXT_INPUT, is_text_model
from . import codec, codec_grpc, metrics
from .batching import BatchingConfig, DynamicBatcher
from .providers import check_session_providers, select_providers
from .signatures import Signature, check_tokens
from .text_model import EMBEDDING_TASKS, TextServing

log = logging.getLogger("modelops.serving")


def find_model_file(model_dir: str | Path) -> Path:
    """`model.onnx` in DIR (KServe's storage initializer layout), or DIR itself if it is a file."""
    p = Path(model_dir)
    if p.is_file():
        return p
    if (p / "model.onnx").exists():
        return p / "model.onnx"
    found = sorted(p.rglob("*.onnx"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"no model.onnx in {p}" + (f" (found {len(found)} .onnx files)" if found else ""))


class OnnxModel(Model):
    def __init__(self, name: str, model_dir: str | Path, device: str = "auto",
                 batching: BatchingConfig | None = BatchingConfig(), intra_op_threads: int = 0,
                 version: str | None = None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.device = device
        self.version = version
        self.batching = batching
        self.intra_op_threads = intra_op_threads
        self.session: ort.InferenceSession | None = None
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.graph_inputs: list[TensorSpec] = []
        self.graph_outputs: list[TensorSpec] = []
        self.signatures: list[Signature] = []
        self.text: TextServing | None = None
        self.created = int(time.time())
        self.not_ready_reason: str | None = None
        self._batcher: DynamicBatcher | None = None
        self.mirror = None  # shadow.Mirror: copies of answered requests to a candidate (--shadow-config)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    # --- lifecycle --------------------------------------------------------------------------
    def load(self) -> bool:
        try:
            providers = select_providers(self.device)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.intra_op_threads:
                so.intra_op_num_threads = self.intra_op_threads
            # onnxruntime's intra-op threads spin between calls by default: on a predictor whose
            # event loop, batcher and clients share a few cores, that spinning takes the CPU the
            # loop needs to parse the next requests. Parked threads wake on the next call.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            model_file = self._checked_model_file()
            self.session = ort.InferenceSession(str(model_file), so, providers=providers)
            check_session_providers(self.session, self.device)
            self.graph_inputs = [TensorSpec.from_ort(i) for i in self.session.get_inputs()]
            self.graph_outputs = [TensorSpec.from_ort(o) for o in self.session.get_outputs()]
            if is_text_model(self.model_dir):
                self.text = TextServing(self.model_dir, self.session.get_inputs(), self.session.get_outputs())
        except ModelOpsError as exc:
            return self._not_ready(str(exc))
        except Exception as exc:  # unreadable file, bad graph: not ready, with the reason
            return self._not_ready(f"cannot load the ONNX model from {self.model_dir}: {exc}")
        if self.text is not None:
            self.signatures = self.text.signatures
            self.inputs, self.outputs = self.text.inputs, self.text.outputs
        else:
            self.inputs, self.outputs = list(self.graph_inputs), list(self.graph_outputs)
            self.signatures = [Signature(tuple(self.inputs), tuple(self.output_names))]
        self._warm_up()
        batchable = all(s.shape and s.shape[0] == -1 for s in self.graph_inputs + self.graph_outputs)
        if self.batching and self.batching.max_batch_size > 1 and batchable:
            self._batcher = DynamicBatcher(
                self.run, self.batching,
                on_batch=metrics.BATCH_ROWS.labels(model=self.name).observe,
                sequence=self.text.sequence if self.text else None,
                on_padding=metrics.PADDING.labels(model=self.name).observe)
        self.ready = True
        self.not_ready_reason = None
        log.info("model %s ready on %s (inputs %s, batching %s)", self.name,
                 self.session.get_providers()[0], [s.to_json() for s in self.inputs],
                 "on" if self._batcher else "off")
        return True

    def _checked_model_file(self) -> Path:
        """Only ONNX is ever loaded, and only from inside the model directory: no symlink out of
        it, no external data outside it (refused with the reason: not ready, never a crash)."""
        if self.model_dir.is_dir():
            check_tree(self.model_dir)
        model_file = find_model_file(self.model_dir)
        check_onnx(model_file)
        return model_file

    def _not_ready(self, reason: str) -> bool:
        self.ready = False
        self.not_ready_reason = reason
        log.error("model %s is not ready: %s", self.name, reason)
        return False

    def _warm_up(self) -> None:
        """First runs allocate arenas and pick kernels: do it before taking traffic."""
        feeds = {}
        for s in self.graph_inputs:
            shape = [1 if d < 0 else d for d in s.shape]
            feeds[s.name] = np.zeros(shape, dtype=s.dtype) if s.dtype != object else np.full(shape, "", object)
        for _ in range(3):
            self.session.run(None, feeds)

    def start(self):
        """KServe's start() marks a model ready; ours is ready only when load() succeeded."""

    def stop(self):
        if self._batcher:
            self._batcher.close()

    # --- inference --------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    async def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model. A value the graph itself refuses is the client's error (400); any other
        run-time failure is `InferenceFailed` (a counted 500), never a bare crash."""
        try:
            if self._batcher is not None:
                return await self._batcher.submit(feeds)
            return self.run(feeds)
        except InvalidArgument as exc:  # a value the graph itself refuses (an index out of range...)
            raise InvalidRequest(f"the model refused the input: {str(exc).splitlines()[0][:300]}") from None
        except ModelOpsError:
            raise
        except Exception as exc:
            raise InferenceFailed(f"model '{self.name}' failed at run time: {exc}"[:2000]) from exc

    async def run_texts(self, texts) -> tuple[list[str], list[np.ndarray], dict[str, np.ndarray]]:
        """A text model on TEXTS: (answer names, answers, the token feeds they came from)."""
        feeds = self.text.tokenize(texts)
        names, outputs = self.text.answer(await self.infer(feeds))
        return names, outputs, feeds

    async def answer(self, request: codec.Decoded) -> tuple[list[str], list[np.ndarray]]:
        """Run a validated request; the requested outputs (all by default), with their names."""
        if request.kind == "text":
            names, outputs, _ = await self.run_texts(request.feeds[TEXT_INPUT].ravel())
        else:
            if request.kind == "tokens":
                check_tokens(request.feeds, self.text.config.vocab_size)
            names, outputs = [o.name for o in self.graph_outputs], await self.infer(request.feeds)
        if request.outputs is None:
            return names, outputs
        index = {n: i for i, n in enumerate(names)}
        return request.outputs, [outputs[index[n]] for n in request.outputs]

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """OpenAI embeddings: one float32 vector per text, and the real tokens they took."""
        if self.text is None or self.text.config.task not in EMBEDDING_TASKS:
            task = self.text.config.task if self.text else "a tensor model"
            raise InvalidRequest(f"model '{self.name}' is {task}, not an embedding model "
                                 f"({' or '.join(EMBEDDING_TASKS)})")
        feeds = self.text.tokenize(texts)
        outputs = await self.infer(feeds)
        return self.text.embeddings([o.name for o in self.graph_outputs], outputs, feeds), self.text.tokens(feeds)

    def metadata(self) -> dict:
        """V2 model metadata; `versions` is the served MLflow model version (--model-version)."""
        doc = {"name": self.name, "versions": [self.version] if self.version else [],
               "platform": "onnxruntime_onnx", "inputs": self.get_input_types(),
               "outputs": self.get_output_types()}
        return doc

    def get_input_types(self) -> list[dict]:
        return [s.to_json() for s in self.inputs]

    def get_output_types(self) -> list[dict]:
        return [s.to_json() for s in self.outputs]

    async def predict(self, payload, headers=None):
        """KServe's own path: v1 `:predict` (V2 REST and gRPC are answered by `routes` and
        `grpc`); the same validation and session."""
        t0 = time.perf_counter()
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        try:
            feeds = None
            if isinstance(payload, InferRequest):
                request = codec_grpc.decode_grpc(payload.to_grpc(), self.inputs, self.output_names,
                                                 self.signatures)
                names, outputs = await self.answer(request)
                given = request.feeds
            elif self.text is not None:
                given = codec.decode_v1(payload, self.inputs)
                names, outputs, feeds = await self.run_texts(given[TEXT_INPUT].ravel())
            else:
                given = codec.decode_v1(payload, self.inputs)
                names, outputs = await self.answer(codec.Decoded(given))
        except InvalidRequest as exc:
            metrics.REQUESTS.labels(self.name, self.version or "", protocol, "400").inc()
            raise InvalidInput(str(exc)) from None
        except InferenceFailed:
            metrics.REQUESTS.labels(self.name, self.version or "", protocol, "500").inc()
            raise
        count, latency = metrics.answered(self.name, self.version or "", protocol)
        count.inc()
        latency.observe(time.perf_counter() - t0)
        if self.mirror is not None:  # shadow: the same inputs, as V2, compared with these outputs
            self.mirror.offer(given, names, outputs)
        if protocol == "v1":
            if feeds is not None:
                return {"predictions": self.text.v1_predictions(names, outputs, feeds)}
            return {"predictions": outputs[0].tolist()}
        infer_outputs = []
        for name, arr in zip(names, outputs):
            out = InferOutput(name=name, shape=list(arr.shape), datatype=codec.NUMPY_TO_V2[arr.dtype])
            out.set_data_from_numpy(arr, binary_data=False)
            infer_outputs.append(out)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=infer_outputs, from_grpc=payload.from_grpc)
