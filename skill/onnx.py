"""The ONNX runtime shim shared by `export` and `score --backend onnx`.

A CrossEncoder's transformer (`model[0]`) is traced with `torch.onnx.export` into one graph;
pooling and head stay in torch. `OrtBackbone` stands in for the Hugging Face model inside the
Transformer module, so the rest of the CrossEncoder (preprocessing, pooling, head, Identity
activation) runs unchanged on the graph's output. `cached_graph` keeps one traced graph per
(weights, config, exporter versions) in a cache folder, published by an atomic rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from skill.errors import prerequisite
from skill.io import hash_obj

ONNX_FILE = "onnx/model.onnx"
OPSET = 17
OUTPUT_NAMES = {"feature-extraction": "last_hidden_state", "sequence-classification": "logits"}
PARITY_TOLERANCE = 1e-3  # max |onnx - torch| on a check batch, raw-score units

_SAMPLE_PAIRS = [
    ("how do I parse a JSON document", "Deserialize a str, bytes or bytearray instance containing a JSON document to a Python object."),
    ("join path components", "Join two or more pathname components, inserting a separator as needed."),
    ("x", "y"),
]


def onnx_unsupported(model) -> str | None:
    """Why this CrossEncoder's transformer cannot be traced to ONNX here (None: it can)."""
    first = model[0]
    task = getattr(first, "transformer_task", None)
    if type(first).__name__ != "Transformer" or task not in OUTPUT_NAMES:
        return f"unsupported first module {type(first).__name__} (task {task!r})"
    return None


def output_name(model) -> str:
    return OUTPUT_NAMES[model[0].transformer_task]


def onnx_input_names(model) -> list[str]:
    """The tokenizer tensors the traced graph takes, in order."""
    return _input_names(model.preprocess(_SAMPLE_PAIRS))


def _input_names(features) -> list[str]:
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features]


class _Traceable:
    """A positional-argument wrapper so `torch.onnx.export` sees exactly the tokenizer's tensors."""

    def __new__(cls, hf_model, input_names: list[str], output: str):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.hf = hf_model

            def forward(self, *tensors):
                return self.hf(**dict(zip(input_names, tensors, strict=True)), return_dict=True)[output]

        return Wrapper().eval()


def trace_onnx(model, target: Path, *, opset: int = OPSET) -> dict[str, Any]:
    """Trace a CrossEncoder's transformer (`model[0]`, fp32) into the ONNX file `target`; pooling and head stay in torch."""
    import torch

    transformer = model[0]
    output = OUTPUT_NAMES[transformer.transformer_task]
    features = model.preprocess(_SAMPLE_PAIRS)
    input_names = _input_names(features)
    wrapper = _Traceable(transformer.model, input_names, output)
    args = tuple(features[k].to(transformer.model.device) for k in input_names)
    target.parent.mkdir(parents=True, exist_ok=True)
    axes = {k: {0: "batch_size", 1: "sequence_length"} for k in input_names}
    axes[output] = {0: "batch_size", 1: "sequence_length"} if output == "last_hidden_state" else {0: "batch_size"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter keeps both axes dynamic for ModernBERT and BERT alike.
        torch.onnx.export(wrapper, args, str(target), input_names=input_names, output_names=[output], dynamic_axes=axes, opset_version=opset, dynamo=False)
    return {"inputs": input_names, "output": output, "opset": opset}


def ort_session(onnx_path: Path, *, threads: int | None = None, optimise: bool = True):
    """An onnxruntime CPU session; `threads` intra-op threads (None: onnxruntime's default), full graph optimisation."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise prerequisite("the ONNX path needs onnxruntime", fix='pip install "reranker-skill[onnx]"') from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


class OrtBackbone:
    """Stands in for the Hugging Face model inside the Transformer module, running the ONNX graph instead."""

    def __new__(cls, onnx_path_or_session, config, output: str):
        import torch

        session = onnx_path_or_session if hasattr(onnx_path_or_session, "run") else ort_session(Path(onnx_path_or_session))
        names = [i.name for i in session.get_inputs()]

        class Backbone(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.config = config

            def forward(self, **kwargs):
                feed = {n: kwargs[n].cpu().numpy() for n in names}
                return {output: torch.from_numpy(session.run(None, feed)[0])}

        return Backbone()


def weights_digest(module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: the model's content, wherever it was loaded from."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def graph_key(model) -> str:
    """What a traced graph depends on: the transformer's weights and config, its inputs, the exporter's versions."""
    import torch
    import transformers

    hf = model[0].model
    config = hf.config
    return hash_obj(
        {
            "weights": weights_digest(hf),
            "config": config.to_json_string(use_diff=False),
            "attn": getattr(config, "_attn_implementation", None),
            "task": model[0].transformer_task,
            "inputs": onnx_input_names(model),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "opset": OPSET,
        }
    )[:16]


def cached_graph(model, cache_dir: Path, *, note: dict | None = None) -> tuple[Path, bool, float]:
    """`cache_dir/onnx-<key>/` holding the traced graph (traced now if absent): (folder, cache hit, trace seconds)."""
    from skill.io import write_json

    cache_dir = Path(cache_dir)
    folder = cache_dir / f"onnx-{graph_key(model)}"
    if (folder / ONNX_FILE).exists():
        return folder, True, 0.0
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=cache_dir))
    try:
        start = time.perf_counter()
        graph = trace_onnx(model, tmp / ONNX_FILE)
        seconds = time.perf_counter() - start
        write_json(tmp / "export.json", {**(note or {}), "graph": graph, "export_seconds": round(seconds, 2)})
        try:
            os.replace(tmp, folder)  # atomic: a folder under the final name is complete
        except OSError:
            if not (folder / ONNX_FILE).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process published the same graph first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, False, seconds


def use_graph(model, session_or_path) -> Any:
    """Run `model`'s transformer on an ONNX graph; returns the torch model it replaced (to swap back)."""
    transformer = model[0]
    torch_model = transformer.model
    transformer.model = OrtBackbone(session_or_path, torch_model.config, OUTPUT_NAMES[transformer.transformer_task])
    return torch_model
