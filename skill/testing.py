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


def write_toy_scored_run(
    run_dir: str | Path,
    domain: dict[str, Path],
    *,
    train_top_k: int = 10,
    eval_top_k: int = 20,
    heldout: float = 0.25,
    dev_queries: int = 8,
    seed: int = 12,
) -> Path:
    """A run folder as `mine` + `score` leave it, built with a lexical first stage and a lexical teacher.

    For tests and benchmarks of `render`/`train` that must not depend on real teachers: first
    stage = word-overlap score; teacher label = a raw, unbounded score (overlap plus a bonus for
    the gold positive) in the `raw_logit` space. Writes train_pairs/scores/heldout_candidates
    parquet files, qrels_heldout.json, split.json and scores.meta.json; with `dev_queries`, also
    dev_candidates.parquet and qrels_dev.json, as `mine` does.
    """
    import re

    import pyarrow as pa

    from skill.data import load_dataset, split_queries
    from skill.io import write_json, write_parquet

    run_dir = Path(run_dir)
    data = load_dataset(domain["corpus"], domain["queries"], domain.get("qrels"))
    split = split_queries(data.queries, data.qrels, heldout_fraction=heldout, seed=seed, dev_queries=dev_queries)

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z0-9]+", text.lower()))

    doc_words = {d: words(t) for d, t in data.corpus.texts.items()}

    def ranked(qid: str) -> list[tuple[str, float]]:
        q = words(data.queries.texts[qid])
        scores = [(d, len(q & w) / (len(q) ** 0.5 * len(w) ** 0.5 + 1e-9)) for d, w in doc_words.items()]
        return sorted(scores, key=lambda x: (-x[1], x[0]))

    def rows(qids: list[str], top_k: int, *, add_positives: bool, teacher: bool) -> dict[str, list]:
        cols: dict[str, list] = {k: [] for k in ("query_id", "doc_id", "query", "document", "rank", "first_stage_score", "relevance")}
        if teacher:
            cols["label"] = []
        for qid in qids:
            positives = data.qrels.positives(qid) if data.qrels else set()
            hits = ranked(qid)[:top_k]
            entries = [(d, r + 1, s) for r, (d, s) in enumerate(hits)]
            if add_positives:
                entries += [(d, 0, float("nan")) for d in sorted(positives - {d for d, _ in hits})]
            for d, rank, s in entries:
                rel = float(data.qrels.labels.get(qid, {}).get(d, 0.0)) if data.qrels else 0.0
                cols["query_id"].append(qid)
                cols["doc_id"].append(d)
                cols["query"].append(data.queries.texts[qid])
                cols["document"].append(data.corpus.texts[d])
                cols["rank"].append(rank)
                cols["first_stage_score"].append(s)
                cols["relevance"].append(rel)
                if teacher:
                    overlap = len(words(data.queries.texts[qid]) & doc_words[d])
                    cols["label"].append(-4.0 + 1.5 * overlap**0.5 + 8.0 * rel)
        return cols

    def table(cols: dict[str, list]):
        types = {"rank": pa.int32(), "first_stage_score": pa.float32(), "relevance": pa.float32(), "label": pa.float32()}
        return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in cols.items()})

    train = rows(split.train, train_top_k, add_positives=True, teacher=True)
    write_parquet(run_dir / "train_pairs.parquet", table({k: v for k, v in train.items() if k != "label"}))
    write_parquet(run_dir / "scores.parquet", table(train))
    write_parquet(run_dir / "heldout_candidates.parquet", table(rows(split.heldout, eval_top_k, add_positives=False, teacher=False)))
    write_json(run_dir / "qrels_heldout.json", {q: (data.qrels.labels.get(q, {}) if data.qrels else {}) for q in split.heldout})
    if split.dev:
        write_parquet(run_dir / "dev_candidates.parquet", table(rows(split.dev, eval_top_k, add_positives=False, teacher=False)))
        write_json(run_dir / "qrels_dev.json", {q: (data.qrels.labels.get(q, {}) if data.qrels else {}) for q in split.dev})
    write_json(run_dir / "split.json", split.model_dump())
    labels = train["label"]
    write_json(
        run_dir / "scores.meta.json",
        {
            "teachers": [{"id": "toy-lexical-teacher", "type": "file", "revision": None, "weight": 1.0}],
            "score_space": "raw_logit",
            "labels": {"count": len(labels), "min": min(labels), "max": max(labels), "mean": sum(labels) / len(labels)},
            "warnings": [],
        },
    )
    return run_dir


# ---------------------------------------------------------------------------------------------
# A tiny mxbai-rerank-v2-shaped model: a Qwen2ForCausalLM in the hub layout, with a byte-level BPE

# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's chat template, without the tool-calling branches.
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_qwen2_tokenizer(texts: Iterable[str] | None = None, *, vocab_size: int = 600):
    """A byte-level BPE with Qwen2's normaliser and pre-tokenizer, wrapped as `Qwen2Tokenizer`.

    "0", "1", "yes" and "no" are single tokens (the score tokens of mxbai-rerank v2 and of
    sentence-transformers' LogitScore default); the chat tokens are special.
    """
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from skill.mxbai import CHAT_PREFIX, CHAT_SUFFIX, TASK_PROMPT

    corpus = list(texts) if texts is not None else stdlib_text(600)
    # The prompt pieces and the score words often enough that they merge as in a real vocabulary.
    corpus += [CHAT_PREFIX + "query: " + t[:80] + ".\n" + "document: " + t[:200] + "\n" + TASK_PROMPT + CHAT_SUFFIX for t in corpus[:200]]
    corpus += ["yes", "no"] * 400
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=QWEN2_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
    )
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    for word in ("0", "1", "yes", "no"):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"the tiny Qwen2 tokenizer splits {word!r} into {len(ids)} tokens; train it on more text")
    return tokenizer


def build_tiny_qwen2(
    out_dir: str | Path, *, texts: Iterable[str] | None = None, seed: int = 0, init_std: float = 0.3, max_position_embeddings: int = 4096
) -> Path:
    """Save a random tiny `Qwen2ForCausalLM` in the layout of `mixedbread-ai/mxbai-rerank-*-v2` (config, weights, tokenizer).

    Hidden 64, 2 layers, tied embeddings; `init_std` ~0.3 so that logit("1") − logit("0") spreads.
    The folder is also readable by transformers 4.57 (the mxbai-rerank reference's stack): config.json
    carries `rope_theta` and tokenizer_config.json `additional_special_tokens`.
    """
    import json

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_qwen2_tokenizer(texts)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        initializer_range=init_std,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        architectures=["Qwen2ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # transformers 4.x reads rope_theta at the top level and special tokens as additional_special_tokens.
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["rope_theta"] = 1e6
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok_path = out_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_path.read_text(encoding="utf-8"))
    if "extra_special_tokens" in tok_cfg:
        tok_cfg["additional_special_tokens"] = tok_cfg.pop("extra_special_tokens")
    tok_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def write_pairs_run(run_dir: str | Path, pairs: list[tuple[str, str]]) -> Path:
    """A run folder as `mine` leaves it, holding exactly `pairs`: query i → document i, every other pair held out.

    For tests of `score` against reference numbers: the pairs (not a first stage) are the point.
    """
    import pyarrow as pa

    from skill.io import write_json, write_parquet
    from skill.manifest import Run, Stage

    run_dir = Path(run_dir)
    columns = {k: [] for k in ("query_id", "doc_id", "query", "document", "rank", "first_stage_score", "relevance")}
    train, held = {k: [] for k in columns}, {k: [] for k in columns}
    for i, (q, d) in enumerate(pairs):
        rows = held if i % 2 else train
        for key, value in zip(columns, (f"q{i}", f"d{i}", q, d, 1, 1.0, 1.0), strict=True):
            rows[key].append(value)
    types = {"rank": pa.int32(), "first_stage_score": pa.float32(), "relevance": pa.float32()}

    def table(rows: dict[str, list]):
        return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in rows.items()})

    run = Run(run_dir)
    with Stage(run, "mine", config={"pairs": len(pairs)}, inputs={}).running() as stage:
        write_parquet(run_dir / "train_pairs.parquet", table(train))
        write_parquet(run_dir / "heldout_candidates.parquet", table(held))
        write_json(run_dir / "qrels_heldout.json", {qid: {did: 1} for qid, did in zip(held["query_id"], held["doc_id"], strict=True)})
        write_json(run_dir / "split.json", {"train": train["query_id"], "heldout": held["query_id"], "dev": []})
        stage.outputs.update(
            {
                "train_pairs": "train_pairs.parquet",
                "heldout_candidates": "heldout_candidates.parquet",
                "qrels_heldout": "qrels_heldout.json",
                "split": "split.json",
            }
        )
    return run_dir
