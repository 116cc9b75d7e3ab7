"""Small ONNX models built in code for the predictor's hostile-input tests (no MLflow needed).

- `mixed`: inputs `x` FP32 [-1, 4] and `ids` INT64 [-1, 3]; outputs `y` = 2x (FP32),
  `total` = sum(ids) as FP32 [-1, 1], `next_ids` = ids + 1 (INT64).
- `types`: one input per V2 datatype (`t_int8` ... `t_bytes`, each [-1, 2]), each echoed by an
  Identity to `o_<type>`: element policies are visible in the answer.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

TYPES = {
    "INT8": TensorProto.INT8, "INT16": TensorProto.INT16, "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "BOOL": TensorProto.BOOL,
    "BYTES": TensorProto.STRING,
}


def _save(model, out_dir: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    return out_dir


def mixed_model(out_dir: Path) -> Path:
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids_f", "axes"], ["total"], keepdims=1),
        helper.make_node("Add", ["ids", "one"], ["next_ids"]),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("next_ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("one", TensorProto.INT64, [], [1]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out_dir)


def types_model(out_dir: Path) -> Path:
    nodes, inputs, outputs = [], [], []
    for datatype, proto in TYPES.items():
        t = datatype.lower()
        nodes.append(helper.make_node("Identity", [f"t_{t}"], [f"o_{t}"]))
        inputs.append(helper.make_tensor_value_info(f"t_{t}", proto, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"o_{t}", proto, ["batch", 2]))
    graph = helper.make_graph(nodes, "types", inputs, outputs)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out_dir)


# Valid example values per datatype (two per row), as JSON would carry them.
EXAMPLE = {
    "INT8": [-128, 127], "INT16": [-32768, 32767], "INT32": [-2**31, 2**31 - 1],
    "INT64": [-2**63, 2**63 - 1], "UINT8": [0, 255], "UINT16": [0, 65535], "UINT32": [0, 2**32 - 1],
    "UINT64": [0, 2**64 - 1], "FP16": [-65504.0, 0.5], "FP32": [-1.5, 3.4e38], "FP64": [1e308, -2.5],
    "BOOL": [True, False], "BYTES": ["héllo", ""],
}


def types_request(**overrides) -> dict:
    """A valid request for `types` (one row); overrides: DATATYPE=data for that input."""
    inputs = []
    for datatype in TYPES:
        data = overrides.get(datatype, EXAMPLE[datatype])
        inputs.append({"name": f"t_{datatype.lower()}", "datatype": datatype, "shape": [1, 2], "data": data})
    return {"inputs": inputs}


def mixed_feeds(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(rows, 4)).astype(np.float32),
            "ids": rng.integers(-1000, 1000, size=(rows, 3)).astype(np.int64)}


def gather_model(out_dir: Path) -> Path:
    """`idx` INT64 [-1, 1] -> `out` = table[idx] (table of 10): an index out of range is a value
    only the graph can refuse (onnxruntime's INVALID_ARGUMENT at run time)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)], "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("table", TensorProto.FLOAT, [10], [float(i) for i in range(10)])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out_dir)


# --- a raw HTTP/1.1 connection: proves what happens to *this* connection ------------------------------
class RawHTTP:
    """One keep-alive connection, no retries and no reconnects: a dropped connection shows."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        body = body or b""
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
                 "Content-Type: application/json", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        return self.response()

    def peer_closed(self) -> bool:
        self.sock.settimeout(2)
        try:
            return self.sock.recv(1) == b""
        except (TimeoutError, socket.timeout):
            return False
        except ConnectionResetError:
            return True

    def response(self):
        status_line, *header_lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        hdrs = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return int(status_line.split()[1]), hdrs, self._read_exactly(int(hdrs.get("content-length", 0)))

    def close(self):
        self.sock.close()


