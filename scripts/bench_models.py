"""The models `scripts/bench_predictor.py` measures by default (issue 17's shapes), seeded, made
by our own code and registered in MLflow's default `pt2` format with a batch-dynamic signature.

- `mlp`: a PyTorch MLP 64 -> 256 -> 256 -> 10 (a few µs of onnxruntime per row: the serving
  path is nearly all of a request).
- `cnn`: five conv-BN-ReLU blocks (32, 32, 64, 64, 128 channels; stride 2 from the third) on
  3x64x64 inputs, global average pool, 10 logits (~1 ms of onnxruntime per row on this 2-core
  machine: the model is most of a request).

Untrained: a benchmark needs the shapes and the work, not the accuracy; the weights come from
`torch.manual_seed(seed)`. The demo's small models stay available as `mlp-demo` and `cnn-demo`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from modelops.demo import models as demo_models

MLP_SHAPE = (64,)
CNN_SHAPE = (3, 64, 64)
CNN_BLOCKS = ((32, 1), (32, 1), (64, 2), (64, 2), (128, 2))  # (channels, stride)


def wide_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def conv_net() -> nn.Module:
    layers: list[nn.Module] = []
    channels = CNN_SHAPE[0]
    for out, stride in CNN_BLOCKS:
        layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def _register(make, shape: tuple, tracking_uri: str, name: str, seed: int) -> str:
    import mlflow.pytorch
    from mlflow.models import infer_signature

    torch.manual_seed(seed)
    model = make().eval()
    example = np.random.default_rng(seed).normal(size=(2, *shape)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    return demo_models._register(  # the demo's run and registration, our model
        lambda n: mlflow.pytorch.log_model(model, name="model", registered_model_name=n, input_example=example,
                                           signature=infer_signature(example, out),
                                           pip_requirements=demo_models.TORCH_REQUIREMENTS),
        tracking_uri, name, "modelops-bench")


def register_mlp(tracking_uri: str, name: str, seed: int = 0) -> str:
    return _register(wide_mlp, MLP_SHAPE, tracking_uri, name, seed)


def register_cnn(tracking_uri: str, name: str, seed: int = 0) -> str:
    return _register(conv_net, CNN_SHAPE, tracking_uri, name, seed)
