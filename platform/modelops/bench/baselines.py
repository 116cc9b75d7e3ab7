"""Baseline servers for the benchmark: what a user gets without ModelOps' predictor.

- `kserve-onnx`: a plain `kserve.Model` around the same onnxruntime session, the textbook
  custom runtime (KServe's own REST/gRPC path end to end, no batching).
- `kserve-torch`: a plain `kserve.Model` running the original PyTorch model from MLflow.
- `kserve-hf`: a plain `kserve.Model` running the Hugging Face pipeline of an MLflow
  `transformers` model (text in as a V2 BYTES input, the pipeline's label and score out).

Run: python -m modelops.bench.baselines {kserve-onnx DIR | kserve-torch MLFLOW_MODEL_DIR} --port P
"""

from __future__ import annotations

import argparse
import sys
import uuid

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class PlainOnnxModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path

    def load(self) -> bool:
        import onnxruntime as ort

        from ..serving.onnx_model import find_model_file

        self.session = ort.InferenceSession(str(find_model_file(self.path)), providers=["CPUExecutionProvider"])
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        outputs = self.session.run(None, feeds)
        infer_outputs = []
        for meta, arr in zip(self.session.get_outputs(), outputs):
            out = InferOutput(name=meta.name, shape=list(arr.shape), datatype="FP32")
            out.set_data_from_numpy(arr, binary_data=False)
            infer_outputs.append(out)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=infer_outputs)


class PlainTorchModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path

    def load(self) -> bool:
        import mlflow.pytorch

        self.model = mlflow.pytorch.load_model(self.path, map_location="cpu")
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        import torch

        with torch.no_grad():
            out = self.model(*[torch.from_numpy(i.as_numpy()) for i in payload.inputs])
        arr = out.numpy().astype(np.float32)
        o = InferOutput(name="output", shape=list(arr.shape), datatype="FP32")
        o.set_data_from_numpy(arr, binary_data=False)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=[o])


class PlainHFModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path

    def load(self) -> bool:
        import mlflow.transformers

        self.pipe = mlflow.transformers.load_model(self.path)
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in payload.inputs[0].as_numpy().ravel()]
        answers = self.pipe(texts, truncation=True)
        labels = InferOutput(name="label", shape=[len(texts)], datatype="BYTES")
        labels.set_data_from_numpy(np.array([a["label"] for a in answers], dtype=object), binary_data=False)
        score = InferOutput(name="score", shape=[len(texts)], datatype="FP32")
        score.set_data_from_numpy(np.array([a["score"] for a in answers], np.float32), binary_data=False)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=[labels, score])


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["kserve-onnx", "kserve-torch", "kserve-hf"])
    p.add_argument("path")
    p.add_argument("--name", default="model")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    cls = {"kserve-onnx": PlainOnnxModel, "kserve-torch": PlainTorchModel, "kserve-hf": PlainHFModel}[args.kind]
    model = cls(args.name, args.path)
    model.load()
    ModelServer(http_port=args.port, enable_grpc=False).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
