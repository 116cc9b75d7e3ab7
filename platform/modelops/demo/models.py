"""Small, seeded demo models, trained by our own code and registered in MLflow.

Nothing is downloaded: data is synthetic and every model is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MLP_FEATURES = 16
CNN_SHAPE = (1, 28, 28)
# skops refuses types it does not trust; tree ensembles need the Tree type listed explicitly.
SKLEARN_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class MLP(nn.Module):
    def __init__(self, features: int = MLP_FEATURES, hidden: int = 64, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, classes))

    def forward(self, x):
        return self.head(self.features(x))


class SwappedMLP(MLP):
    """A silently wrong version: the trained MLP with its first two output columns swapped. Its
    ONNX matches it (the parity gate passes), it answers 200 quickly, and its numbers are wrong:
    only comparing its answers with the serving version's (shadow) shows it."""

    def forward(self, x):
        return self.net(x)[:, [1, 0, 2]]


SLOW_DIM, SLOW_LAYERS = 1024, 64


class SlowMLP(MLP):
    """A slow version: the trained MLP's answers, plus SLOW_LAYERS square matmuls of SLOW_DIM that
    change nothing (added times 0): a few ms per row instead of microseconds (the performance gate)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("work", torch.randn(SLOW_DIM, SLOW_DIM, generator=g) / SLOW_DIM ** 0.5)

    def forward(self, x):
        out = self.net(x)
        h = x.sum(dim=1, keepdim=True).expand(-1, SLOW_DIM)
        for _ in range(SLOW_LAYERS):
            h = torch.tanh(h @ self.work)
        return out + 0.0 * h.sum(dim=1, keepdim=True)


class ExportDivergentMLP(MLP):
    """Adds 0.01 to its output only while being exported to ONNX.

    It exists to prove the parity gate: its ONNX graph runs fine and is wrong, and the
    conversion must refuse it.
    """

    def forward(self, x):
        out = super().forward(x)
        if torch.onnx.is_in_onnx_export():
            out = out + 0.01
        return out


GUARD_LIMIT = 50.0  # the guarded (bad) version fails on batches with a first feature above this


def _classification_data(seed: int, n: int, features: int, classes: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=(features, classes)).astype(np.float32)
    y = np.argmax(x @ w + 0.1 * rng.normal(size=(n, classes)), axis=1)
    return x, y


def _fit(model: nn.Module, opt: torch.optim.Optimizer, x: np.ndarray, y: np.ndarray, steps: int):
    """Full-batch cross-entropy steps; returns the model in eval mode."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def train_mlp(seed: int = 0, epochs: int = 30, cls: type[MLP] = MLP) -> MLP:
    torch.manual_seed(seed)
    x, y = _classification_data(seed, 512, MLP_FEATURES, 3)
    model = cls()
    return _fit(model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y, epochs)


def train_cnn(seed: int = 0, steps: int = 10) -> SmallCNN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, *CNN_SHAPE)).astype(np.float32)
    y = rng.integers(0, 10, size=64)
    model = SmallCNN()
    return _fit(model, torch.optim.SGD(model.parameters(), lr=1e-2), x, y, steps)


def train_sklearn_pipeline(seed: int = 0, kind: str = "logreg"):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _classification_data(seed, 512, MLP_FEATURES, 3)
    x = x * 3.0 + 1.0  # give the scaler something to do
    head = (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=seed)
            if kind == "forest" else LogisticRegression(max_iter=500))
    return Pipeline([("scale", StandardScaler()), ("clf", head)]).fit(x, y), x


# Explicit requirements: MLflow's inference of them starts a subprocess (~5 s a model).
TORCH_REQUIREMENTS = ["torch==2.13.0", "numpy"]
SKLEARN_REQUIREMENTS = ["scikit-learn", "numpy", "skops"]
ONNX_REQUIREMENTS = ["onnx", "onnxruntime", "numpy"]


def _register(log, tracking_uri: str, name: str, experiment: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run():
        info = log(name)
    return str(info.registered_model_version)


def register_torch_mlp(tracking_uri: str, name: str, seed: int = 0,
                       cls: type[MLP] = MLP, serialization_format: str = "pt2",
                       serve_cls: type[MLP] | None = None) -> str:
    """Train and register an MLP (16 features -> 3 logits); returns the new version.

    `serve_cls` (SwappedMLP, SlowMLP): trained as an MLP, registered as that class with the same
    weights (what it does differently is not trained away).

    "pt2" (MLflow 3's default, torch.export) is the safe format; "pickle" stores the module
    itself, which `ExportDivergentMLP` needs to keep its export-time behaviour.
    """
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model = train_mlp(seed, cls=cls)
    if serve_cls is not None:
        trained, model = model, serve_cls()
        model.load_state_dict(trained.state_dict(), strict=False)
        model.eval()
    example = np.random.default_rng(seed).normal(size=(4, MLP_FEATURES)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    return _register(
        lambda n: mlflow.pytorch.log_model(
            model, name="model", registered_model_name=n, input_example=example,
            signature=infer_signature(example, out), serialization_format=serialization_format,
            pip_requirements=TORCH_REQUIREMENTS),
        tracking_uri, name, "modelops-demo")


def register_torch_cnn(tracking_uri: str, name: str, seed: int = 0) -> str:
    """Train and register a small CNN (1x28x28 -> 10 logits); returns the new version."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model = train_cnn(seed)
    example = np.random.default_rng(seed).normal(size=(2, *CNN_SHAPE)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    return _register(
        lambda n: mlflow.pytorch.log_model(
            model, name="model", registered_model_name=n, input_example=example,
            signature=infer_signature(example, out), pip_requirements=TORCH_REQUIREMENTS),
        tracking_uri, name, "modelops-demo")


def register_sklearn_pipeline(tracking_uri: str, name: str, seed: int = 0,
                              kind: str = "logreg") -> str:
    """Train and register StandardScaler + (LogisticRegression | RandomForest); returns the version."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    model, x = train_sklearn_pipeline(seed, kind)
    example = x[:4]
    return _register(
        lambda n: mlflow.sklearn.log_model(
            model, name="model", registered_model_name=n, input_example=example,
            signature=infer_signature(example, model.predict(example)),
            skops_trusted_types=SKLEARN_TRUSTED_TYPES, pip_requirements=SKLEARN_REQUIREMENTS),
        tracking_uri, name, "modelops-demo")


def register_onnx_model(tracking_uri: str, name: str, seed: int = 0, epochs: int = 5,
                        transform=None, signature: bool = True) -> str:
    """Register an MLP exported to ONNX under the mlflow.onnx flavor (the passthrough path);
    `transform(onnx.ModelProto)` edits the graph first (see `register_guarded_mlp`).
    `signature=False` logs it without signature and input example: the graph says what it takes."""
    import io

    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    model = train_mlp(seed, epochs=epochs)
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(2, MLP_FEATURES),), buf, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "b"}, "output": {0: "b"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    if transform is not None:
        proto = transform(proto)
    example = np.random.default_rng(seed).normal(size=(4, MLP_FEATURES)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    described = {"input_example": example, "signature": infer_signature(example, out)} if signature else {}
    return _register(
        lambda n: mlflow.onnx.log_model(proto, name="model", registered_model_name=n,
                                        pip_requirements=ONNX_REQUIREMENTS, **described),
        tracking_uri, name, "modelops-demo")


def add_runtime_guard(model, limit: float = GUARD_LIMIT):
    """A deliberately bad copy of an ONNX model (`onnx.ModelProto`): the same outputs, plus a bug
    that only some inputs reach. When any row's first input feature exceeds `limit`, the graph asks
    onnxruntime for a 10^15-element Range, which fails to allocate (status FAIL, a run-time failure
    of the model, so the predictor answers 500 `InferenceFailed`). Ordinary inputs pass through
    unchanged, so the parity gate passes: only live traffic shows the problem, as in real life."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    x, out = g.input[0].name, g.output[0].name
    for node in g.node:  # the old output becomes an intermediate value
        node.output[:] = [f"{out}__pre" if o == out else o for o in node.output]
    g.initializer.extend([
        helper.make_tensor("guard_starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("guard_ends", TensorProto.INT64, [1], [1]),
        helper.make_tensor("guard_axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("guard_limit", TensorProto.FLOAT, [], [limit]),
        helper.make_tensor("guard_zero_i", TensorProto.INT64, [], [0]),
        helper.make_tensor("guard_one_i", TensorProto.INT64, [], [1]),
        helper.make_tensor("guard_huge", TensorProto.INT64, [], [10 ** 15]),
    ])
    g.node.extend([
        helper.make_node("Slice", [x, "guard_starts", "guard_ends", "guard_axes"], ["guard_first"]),
        helper.make_node("Greater", ["guard_first", "guard_limit"], ["guard_big"]),
        helper.make_node("Cast", ["guard_big"], ["guard_big_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["guard_big_i"], ["guard_any"], keepdims=0),
        helper.make_node("Mul", ["guard_any", "guard_huge"], ["guard_n"]),
        helper.make_node("Range", ["guard_zero_i", "guard_n", "guard_one_i"], ["guard_range"]),  # n=0: empty
        helper.make_node("Cast", ["guard_range"], ["guard_range_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["guard_range_f"], ["guard_zero"], keepdims=0),  # 0.0 when it runs
        helper.make_node("Add", [f"{out}__pre", "guard_zero"], [out]),
    ])
    onnx.checker.check_model(m)
    return m


def register_guarded_mlp(tracking_uri: str, name: str, seed: int = 0) -> str:
    """Register a deliberately bad MLP version (`add_runtime_guard`) under the mlflow.onnx flavor."""
    return register_onnx_model(tracking_uri, name, seed, epochs=30, transform=add_runtime_guard)


def swap_output_columns(model, a: int = 0, b: int = 1):
    """A silently wrong copy of an ONNX model (`onnx.ModelProto`, output [batch, classes]): columns
    `a` and `b` of its output swapped (`SwappedMLP` as a graph). It answers 200, as fast as before,
    with wrong numbers; only comparing its answers with the serving version's shows it."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{out}__pre" if o == out else o for o in node.output]
    order = list(range(3))
    order[a], order[b] = b, a
    g.initializer.append(helper.make_tensor("swap_order", TensorProto.INT64, [3], order))
    g.node.append(helper.make_node("Gather", [f"{out}__pre", "swap_order"], [out], axis=1))
    onnx.checker.check_model(m)
    return m


def add_slow_branch(model, dim: int = SLOW_DIM, layers: int = SLOW_LAYERS):
    """A slow copy of an ONNX model (`SlowMLP` as a graph): the same outputs, plus a branch of
    `layers` square MatMul + Tanh of `dim` whose result is added times 0 (~100x the work per row)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    x, out = g.input[0].name, g.output[0].name
    for node in g.node:
        node.output[:] = [f"{out}__pre" if o == out else o for o in node.output]
    work = torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)).numpy() / dim ** 0.5
    g.initializer.extend([numpy_helper.from_array(work.astype(np.float32), "slow_work"),
                          helper.make_tensor("slow_axes", TensorProto.INT64, [1], [1]),
                          helper.make_tensor("slow_shape", TensorProto.INT64, [2], [1, dim]),
                          helper.make_tensor("slow_zero", TensorProto.FLOAT, [], [0.0])])
    nodes = [helper.make_node("ReduceSum", [x, "slow_axes"], ["slow_sum"], keepdims=1),
             helper.make_node("Expand", ["slow_sum", "slow_shape"], ["slow_h0"])]
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [f"slow_h{i}", "slow_work"], [f"slow_m{i}"]),
                  helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_h{i + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"slow_h{layers}", "slow_axes"], ["slow_total"], keepdims=1),
              helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_nothing"]),
              helper.make_node("Add", [f"{out}__pre", "slow_nothing"], [out])]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def register_swapped_mlp(tracking_uri: str, name: str, seed: int = 0) -> str:
    """Register a silently wrong MLP version (`swap_output_columns`) under the mlflow.onnx flavor."""
    return register_onnx_model(tracking_uri, name, seed, epochs=30, transform=swap_output_columns)


def register_slow_mlp(tracking_uri: str, name: str, seed: int = 0) -> str:
    """Register a slow MLP version (`add_slow_branch`) under the mlflow.onnx flavor."""
    return register_onnx_model(tracking_uri, name, seed, epochs=30, transform=add_slow_branch)


def rename_input(model, new_name: str = "features"):
    """A copy of an ONNX model (`onnx.ModelProto`) whose first input is called `new_name`: the same
    numbers, but every client request that names the old input is refused (a 400) — a retrained
    model exported by other code, a common accident."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    old = m.graph.input[0].name
    m.graph.input[0].name = new_name
    for node in m.graph.node:
        node.input[:] = [new_name if i == old else i for i in node.input]
    onnx.checker.check_model(m)
    return m


def register_renamed_mlp(tracking_uri: str, name: str, seed: int = 0, new_name: str = "features") -> str:
    """Register a good MLP whose ONNX input is called `new_name` instead of `input`."""
    return register_onnx_model(tracking_uri, name, seed, transform=lambda m: rename_input(m, new_name),
                               signature=False)
