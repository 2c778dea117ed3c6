"""Tiny offline models for tests, benchmarks and smoke runs.

Nothing here touches the network: the tokenizer is a WordPiece trained in-process on the
text it is given (or on the standard library's docstrings), and the encoder is a ModernBERT —
the Ettin architecture — initialised from a small config.
"""

from __future__ import annotations

import inspect
import pkgutil
from collections.abc import Iterable
from pathlib import Path

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def stdlib_text(limit: int = 2000) -> list[str]:
    """Docstrings of standard-library modules: real English text every Python install has."""
    import importlib

    texts: list[str] = []
    for name in ("json", "os", "re", "csv", "pathlib", "collections", "functools", "itertools", "string", "textwrap"):
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
            if len(texts) >= limit:
                return texts
    return texts or [m.name for m in pkgutil.iter_modules()]


def build_tokenizer(texts: Iterable[str] | None = None, *, vocab_size: int = 2000):
    """Train a small lowercase WordPiece tokenizer and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS)
    tok.train_from_iterator(list(texts) if texts is not None else stdlib_text(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_modernbert(
    out_dir: str | Path,
    *,
    texts: Iterable[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny ModernBERT encoder (+ tokenizer) to `out_dir`.

    The folder loads like `jhu-clsp/ettin-encoder-*`: as a base for `render --base`, or
    directly with `CrossEncoder(out_dir, num_labels=1)`.
    """
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts)
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        max_position_embeddings=512,
        global_attn_every_n_layers=1,
        local_attention=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(seed)
    model = ModernBertModel(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_reranker(out_dir: str | Path, *, base_dir: str | Path | None = None, seed: int = 0) -> Path:
    """A tiny Ettin-shaped cross-encoder (Identity activation), saved to `out_dir`."""
    from skill.modeling import build_ettin_reranker

    out_dir = Path(out_dir)
    if base_dir is None:
        base_dir = build_tiny_modernbert(out_dir.parent / f"{out_dir.name}-base", seed=seed)
    model = build_ettin_reranker(str(base_dir), max_seq_length=128, seed=seed)
    model.save(str(out_dir))
    return out_dir
