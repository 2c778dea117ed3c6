"""Building and loading rerankers with the score scale kept raw."""

from __future__ import annotations

from typing import Literal

Pooling = Literal["cls", "mean"]


def build_ettin_reranker(
    base: str,
    *,
    max_seq_length: int,
    pooling: Pooling = "cls",
    head: Literal["ettin", "linear"] = "ettin",
    seed: int = 12,
    device: str | None = None,
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
):
    """Encoder → pooling → [Dense(H→H, GELU, no bias) → LayerNorm] → Dense(H→1, Identity) named "scores".

    Stock sentence-transformers modules only, so the saved folder reloads anywhere.
    `activation_fn` is Identity: `predict`/`rank` return raw scores.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    torch.manual_seed(seed)
    encoder = Transformer(
        base,
        transformer_task="feature-extraction",
        max_seq_length=max_seq_length,
        # Explicit everywhere: left unset, transformers prompts on stdin and a piped "y" would run the folder's code.
        model_kwargs={**(model_kwargs or {}), "trust_remote_code": trust_remote_code},
        config_kwargs={"trust_remote_code": trust_remote_code},
        processor_kwargs={"trust_remote_code": trust_remote_code},
    )
    hidden = encoder.get_embedding_dimension()
    modules: list = [encoder, Pooling(hidden, pooling_mode=pooling)]
    if head == "ettin":
        modules += [Dense(hidden, hidden, bias=False, activation_function=torch.nn.GELU()), LayerNorm(hidden)]
    modules.append(Dense(hidden, 1, activation_function=torch.nn.Identity(), module_output_name="scores"))
    return CrossEncoder(modules=modules, activation_fn=torch.nn.Identity(), device=device)


def load_reranker(path: str, *, device: str | None = None, max_seq_length: int | None = None, **kwargs):
    """Load any CrossEncoder and force raw scores (Identity), whatever its saved activation."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(path, device=device, activation_fn=torch.nn.Identity(), **kwargs)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


ModelFolderKind = Literal["reranker", "mxbai-v2", "bi-encoder", "encoder", "multi-label", "causal-lm", "none"]


def model_folder_kind(path) -> ModelFolderKind:
    """What a local model folder holds, from its config files alone (nothing is loaded).

    reranker: a CrossEncoder folder, or a one-label *ForSequenceClassification model;
    mxbai-v2: a CrossEncoder with a LogitScore head; bi-encoder: a SentenceTransformer folder;
    multi-label: a classifier with several labels; causal-lm: a bare *ForCausalLM; encoder: any
    other transformers model; none: no model config at all (or an unreadable one).
    """
    import json
    from pathlib import Path

    path = Path(path)

    def read(name: str) -> dict | None:
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    modules = path / "modules.json"
    st_config = read("config_sentence_transformers.json")
    if st_config is not None or modules.exists():
        if st_config is not None and st_config.get("model_type") == "CrossEncoder":
            try:
                if "LogitScore" in modules.read_text(encoding="utf-8"):
                    return "mxbai-v2"
            except OSError:
                pass
            return "reranker"
        return "bi-encoder"
    config = read("config.json")
    if config is None:
        return "none"
    architectures = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        labels = len(config.get("id2label") or {}) or config.get("num_labels", 1)
        return "reranker" if labels == 1 else "multi-label"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "causal-lm"
    return "encoder"
