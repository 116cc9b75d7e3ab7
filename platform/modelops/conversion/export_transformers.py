"""Hugging Face text models -> ONNX plus the text artifact (modelops.text): MLflow's `transformers`
flavor (text-classification, feature-extraction) and `sentence_transformers` flavor.

Loaded without running code from the artifact: model and tokenizer classes must be ones that
transformers ships (never `trust_remote_code`), files are read from the model directory only
(nothing downloaded). The graph takes int64 [batch, sequence] token tensors; the tokenizer
(tokenizer.json) and how answers are made (text.json) travel beside it. For sentence
transformers, pooling and normalisation are inside the graph.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from .. import errors
from ..artifacts import inside
from ..tensors import TensorSpec
from ..text import TEXT_CONFIG_FILE, TOKENIZER_FILE, TextConfig
from .export_torch import _quiet_exporter
from .exported import Exported
from .fusion import transformer_config
from .options import ConversionOptions
from .source import SourceModel

TEXT_TASKS = {"text-classification": "logits", "feature-extraction": "last_hidden_state"}
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "longformer", "bart")  # positions offset by pad id + 1


def _transformers_class(name: str | None, what: str):
    import transformers

    cls = getattr(transformers, name or "", None)
    if not isinstance(cls, type):
        raise errors.UntrustedArtifact(
            f"the {what} class {name!r} is not one transformers ships: loading it would run code from "
            "the artifact (trust_remote_code), which conversion never does")
    return cls


def _flavor_conf(source: SourceModel, flavor: str) -> dict:
    from mlflow.models import Model

    return dict(Model.load(str(source.path)).flavors[flavor])


def _max_length(tokenizer, config, *more: int | None) -> int:
    limits = [int(v) for v in (tokenizer.model_max_length, *more) if v and 0 < int(v) < 10**9]
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos:
        if getattr(config, "model_type", "") in ROBERTA_LIKE:
            max_pos -= (config.pad_token_id or 0) + 1
        limits.append(int(max_pos))
    if not limits:
        raise errors.ConversionError("the model names no maximum sequence length (tokenizer or config)")
    return min(limits)


def _save_tokenizer(tokenizer, out_dir: Path) -> Path:
    if not getattr(tokenizer, "is_fast", False):
        raise errors.ConversionError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; the served text model needs one "
            "(tokenizer.json)")
    path = out_dir / TOKENIZER_FILE
    tokenizer.backend_tokenizer.save(str(path))
    return path


def _model_inputs(tokenizer, model) -> list[str]:
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in params:
        names.append("token_type_ids")
    return names


def _eager(model) -> str | None:
    """Switch to eager attention (traces to plain MatMul/Softmax that onnxruntime fuses); returns
    the implementation to restore afterwards."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        return None
    try:
        model.set_attn_implementation("eager")
    except Exception:  # a model without an eager path: export what it has
        return None
    return before


def _export_graph(module, input_names: list[str], output_names: list[str], sequence_outputs: set[str],
                  vocab_size: int, options: ConversionOptions, out_path: Path) -> dict[str, dict[int, str]]:
    import torch

    # Batch 2, length 8, the second row padded: nothing specialises to 1 and the mask path is traced.
    ids = torch.arange(16, dtype=torch.int64).reshape(2, 8) % max(vocab_size, 1)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    table = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(2, 8, dtype=torch.int64)}
    args = tuple(table[n] for n in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes.update({n: ({0: "batch", 1: "sequence"} if n in sequence_outputs else {0: "batch"}) for n in output_names})
    try:
        with _quiet_exporter(), torch.no_grad():
            # To a path (not a buffer): over 2 GB the exporter writes external data beside it.
            torch.onnx.export(module, args, str(out_path), input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, opset_version=max(options.opset, 14), dynamo=False,
                              do_constant_folding=True)
    except Exception as exc:
        raise errors.ConversionError(f"torch.onnx.export failed: {exc}") from exc
    return axes


def _torch_reference(module, input_names: list[str]):
    import torch

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
        return [out.detach().cpu().numpy()]

    return reference


def _specs(names: list[str]) -> list[TensorSpec]:
    return [TensorSpec(n, np.dtype(np.int64), (-1, -1)) for n in names]


def _function_to_apply(config) -> str:
    """The text-classification pipeline's default rule."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def load_transformers(source: SourceModel):
    """(model, tokenizer, task) of an MLflow transformers directory, from its files only."""
    conf = _flavor_conf(source, "transformers")
    task = conf.get("task")
    if task not in TEXT_TASKS:
        raise errors.UnsupportedFlavor(
            f"transformers task {task!r} is not supported for ONNX conversion; supported tasks: "
            f"{', '.join(TEXT_TASKS)}", flavors=[f"transformers ({task})"])
    if conf.get("source_model_revision") or not conf.get("model_binary"):
        raise errors.ConversionError(
            "the transformers model was saved without its weights (save_pretrained=False): conversion "
            "downloads nothing; save it with save_pretrained=True")
    if conf.get("peft_adaptor") or conf.get("source_model_local_base"):
        raise errors.ConversionError("PEFT / local-base transformers models are not supported for conversion")
    if "tokenizer" not in (conf.get("components") or []):
        raise errors.ConversionError(f"the {task} model has no tokenizer component")
    model_cls = _transformers_class(conf.get("pipeline_model_type"), "model")
    tok_cls = _transformers_class(conf.get("tokenizer_type"), "tokenizer")
    model_dir = inside(source.path, conf["model_binary"], "the transformers flavor's model_binary")
    tok_dir = inside(source.path, "components/tokenizer", "the transformers tokenizer")
    try:
        model = model_cls.from_pretrained(str(model_dir), trust_remote_code=False, local_files_only=True)
        try:
            tokenizer = tok_cls.from_pretrained(str(tok_dir), trust_remote_code=False, local_files_only=True)
        except Exception:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False,
                                                      local_files_only=True, use_fast=True)
    except errors.ModelOpsError:
        raise
    except Exception as exc:
        raise errors.ConversionError(f"loading the transformers model failed: {exc}") from exc
    model.eval()
    return model, tokenizer, task


def export_transformers(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    import torch
    from transformers import pipeline

    model, tokenizer, task = load_transformers(source)
    config = model.config
    input_names = _model_inputs(tokenizer, model)
    output = TEXT_TASKS[task]
    max_length = _max_length(tokenizer, config)

    class Graph(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return getattr(self.inner(**dict(zip(input_names, args)), return_dict=True), output)

    graph = Graph(model).eval()
    restore = _eager(model)
    axes = _export_graph(graph, input_names, [output], {"last_hidden_state"}, len(tokenizer), options, out_path)
    if restore:
        model.set_attn_implementation(restore)

    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()} if task == "text-classification" else {}
    text = TextConfig(
        task=task, max_length=max_length, model_inputs=tuple(input_names), outputs=(output,),
        pad_token_id=int(tokenizer.pad_token_id or 0), vocab_size=len(tokenizer), id2label=id2label,
        function_to_apply=_function_to_apply(config) if task == "text-classification" else "none",
        source_flavor="transformers")
    pipe = pipeline(task, model=model, tokenizer=tokenizer, device="cpu")

    if task == "text-classification":
        label2id = {v: k for k, v in id2label.items()}
        if len(label2id) != len(id2label) or len(id2label) != config.num_labels:
            raise errors.ConversionError("the classifier's id2label does not name each class once")

        def text_reference(texts: list[str]) -> list[np.ndarray]:
            answers = pipe(list(texts), top_k=None, truncation=True, max_length=max_length)
            rows = []
            for answer in answers:
                row = np.zeros(len(id2label), dtype=np.float32)
                for item in answer:
                    row[label2id[item["label"]]] = item["score"]
                rows.append(row)
            return rows
    else:
        def text_reference(texts: list[str]) -> list[np.ndarray]:
            out = pipe(list(texts), return_tensors=True,
                       tokenize_kwargs={"truncation": True, "max_length": max_length})
            return [np.asarray(o.detach().cpu().numpy())[0] for o in out]

    return _text_exported(graph, input_names, axes, text, text_reference, tokenizer, config, out_path)


def _text_exported(graph, input_names, axes, text: TextConfig, text_reference, tokenizer, config,
                   out_path: Path):
    out_dir = out_path.parent
    extra = {TOKENIZER_FILE: _save_tokenizer(tokenizer, out_dir), TEXT_CONFIG_FILE: text.save(out_dir)}
    return Exported(reference=_torch_reference(graph, input_names), inputs=_specs(input_names),
                    dynamic_axes=axes, extra_files=extra, text=text, text_reference=text_reference,
                    transformer=transformer_config(config))


def load_sentence_transformer(source: SourceModel):
    from sentence_transformers import SentenceTransformer

    conf = _flavor_conf(source, "python_function")
    data = inside(source.path, conf.get("data", "model.sentence_transformer"), "the sentence_transformers data")
    modules = data / "modules.json"
    if not modules.is_file():
        raise errors.ConversionError(f"{data.name}/modules.json is missing: not a SentenceTransformer directory")
    for entry in json.loads(modules.read_text()):
        kind = str(entry.get("type", ""))
        if not kind.startswith("sentence_transformers."):
            raise errors.UntrustedArtifact(
                f"the SentenceTransformer module {kind!r} is not one sentence-transformers ships: loading "
                "it would run code from outside the library")
        inside(data, entry.get("path") or ".", "a SentenceTransformer module path")
    try:
        return SentenceTransformer(str(data), device="cpu", trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        raise errors.ConversionError(f"loading the SentenceTransformer failed: {exc}") from exc


def export_sentence_transformers(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    import torch

    st = load_sentence_transformer(source).eval()
    first = st[0]
    model = getattr(first, "auto_model", None) or getattr(first, "model", None)
    tokenizer = getattr(first, "tokenizer", None) or st.tokenizer
    if model is None or tokenizer is None:
        raise errors.ConversionError("the SentenceTransformer's first module is not a Hugging Face Transformer")
    input_names = _model_inputs(tokenizer, model)
    max_length = _max_length(tokenizer, model.config, st.max_seq_length)

    class Graph(torch.nn.Module):
        """Transformer, pooling, normalisation: token ids in, `sentence_embedding` out."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(dict(zip(input_names, args)))["sentence_embedding"]

    graph = Graph(st).eval()
    restore = _eager(model)
    axes = _export_graph(graph, input_names, ["sentence_embedding"], set(), len(tokenizer), options, out_path)
    if restore:
        model.set_attn_implementation(restore)
    text = TextConfig(
        task="sentence-embedding", max_length=max_length, model_inputs=tuple(input_names),
        outputs=("sentence_embedding",), pad_token_id=int(tokenizer.pad_token_id or 0),
        vocab_size=len(tokenizer), source_flavor="sentence_transformers")

    def text_reference(texts: list[str]) -> list[np.ndarray]:
        return list(np.asarray(st.encode(list(texts), convert_to_numpy=True, show_progress_bar=False)))

    return _text_exported(graph, input_names, axes, text, text_reference, tokenizer, model.config, out_path)
