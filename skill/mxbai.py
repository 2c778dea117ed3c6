"""mxbai-rerank v2 scored natively: the reference's prompt, truncation and score, on plain transformers.

`mixedbread-ai/mxbai-rerank-{base,large}-v2` are Qwen2.5 causal LMs. Their reference
implementation (the `mxbai-rerank` package, 0.1.6) scores a (query, document) pair as follows,
and so does this module (written from that description, with no dependency on the package,
which does not run under transformers 5):

- the prompt is assembled from pieces, each tokenised on its own with `add_special_tokens=False`
  and the ids concatenated (never the whole prompt as one string: BPE merges across a join,
  e.g. `.` + `\\n`, would give other tokens):
  `CHAT_PREFIX` · `query: {q}` · `\\n` · `document: {d}` · `\\n` · `TASK_PROMPT` · `CHAT_SUFFIX`;
- `max_length` counts query and document tokens only (`query: `/`document: ` and the `\\n`
  between them included); the template (prefix, the second `\\n`, task prompt, suffix) comes on
  top. The query piece is cut to `max_length * 3 // 4` tokens, then the document piece so that
  query + `\\n` + document fit in `max_length`. When `max_length` + template exceeds the model's
  `max_position_embeddings`, `max_length` shrinks to fit;
- a batch is padded on the left to its longest prompt rounded up to a multiple of 8, and the
  model runs without explicit position ids (as the reference does);
- score = logit("1") − logit("0") at the last position: raw and unbounded (`raw_logit`). The
  reference's optional normalisation, sigmoid(score − m/2) with m = 9 (base) or 12 (large), is
  not applied.

Only the last position's two logits are needed, so the LM head is not run over the vocabulary:
the final hidden state at the last position is multiplied with the two rows of the output
embedding (tied to the input embedding in these models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEP = "\n"
QUERY_PROMPT = "query: {query}"
DOC_PROMPT = "document: {document}"
TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
CHAT_PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
TRUE_TOKEN, FALSE_TOKEN = "1", "0"
PAD_MULTIPLE = 8
# The reference's own normalisation constant m in sigmoid(score − m/2); recorded for the docs, never applied.
NORMALISATION_MAX = {"mixedbread-ai/mxbai-rerank-base-v2": 9.0, "mixedbread-ai/mxbai-rerank-large-v2": 12.0}


def _cut(ids: list[int], n: int, side: str) -> list[int]:
    n = max(n, 0)
    if len(ids) <= n:
        return ids
    return ids[len(ids) - n :] if side == "left" else ids[:n]


@dataclass
class MxbaiPrompt:
    """The tokenised template and the truncation rule, for one tokenizer and one `max_length`."""

    tokenizer: object
    max_length: int  # query + document tokens (after fitting under the model's position limit)
    prefix: list[int]
    sep: list[int]
    task: list[int]
    suffix: list[int]
    true_id: int
    false_id: int
    pad_id: int
    model_max_length: int

    @classmethod
    def build(cls, tokenizer, *, max_length: int, model_max_length: int) -> MxbaiPrompt:
        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        true_ids, false_ids = ids(TRUE_TOKEN), ids(FALSE_TOKEN)
        if len(true_ids) != 1 or len(false_ids) != 1:
            raise ValueError(
                f"the tokenizer splits {TRUE_TOKEN!r} or {FALSE_TOKEN!r} into several tokens ({true_ids}, {false_ids}): not an mxbai-rerank v2 tokenizer"
            )
        prompt = cls(tokenizer, max_length, ids(CHAT_PREFIX), ids(SEP), ids(TASK_PROMPT), ids(CHAT_SUFFIX), true_ids[0], false_ids[0], 0, model_max_length)
        if max_length + prompt.template_length > model_max_length:
            prompt.max_length = model_max_length - prompt.template_length
        if prompt.max_length < 4:
            raise ValueError(
                f"the model's {model_max_length} positions leave no room for a query and a document after the {prompt.template_length}-token template"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        prompt.pad_id = int(pad if pad is not None else 0)
        return prompt

    @property
    def template_length(self) -> int:
        """Tokens every prompt carries on top of query + document (the reference's `predefined_length`)."""
        return len(self.prefix) + len(self.sep) + len(self.task) + len(self.suffix)

    def encode(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        """The prompt's token ids for each pair, unpadded."""
        tok = self.tokenizer
        side = getattr(tok, "truncation_side", "right")
        query_cap = self.max_length * 3 // 4
        q_all = tok([QUERY_PROMPT.format(query=q) for q, _ in pairs], add_special_tokens=False)["input_ids"]
        d_all = tok([DOC_PROMPT.format(document=d) for _, d in pairs], add_special_tokens=False)["input_ids"]
        out = []
        for q_ids, d_ids in zip(q_all, d_all, strict=True):
            q_ids = _cut(list(q_ids), query_cap, side)
            d_ids = _cut(list(d_ids), min(self.model_max_length - len(q_ids) - self.template_length, self.max_length), side)
            second = _cut(self.sep + d_ids, self.max_length - len(q_ids), side)  # the pair fits in max_length
            out.append(self.prefix + q_ids + second + self.sep + self.task + self.suffix)
        return out

    def collate(self, encoded: list[list[int]]):
        """Left-padded `input_ids` and `attention_mask` tensors, padded to the longest rounded up to a multiple of 8."""
        import torch

        longest = max(len(ids) for ids in encoded)
        width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        return input_ids, mask


class MxbaiScorer:
    """A loaded mxbai-rerank v2 model: `lengths(pairs)` and `score(pairs)` (one forward pass per call)."""

    def __init__(self, model, tokenizer, *, max_length: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.prompt = MxbaiPrompt.build(tokenizer, max_length=max_length, model_max_length=int(getattr(config, "max_position_embeddings", None) or 32768))
        # The two rows of the output embedding; models that rescale or cap their logits take the plain path.
        self._rows = None
        head = model.get_output_embeddings()
        if head is not None and getattr(head, "bias", None) is None and not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale")):
            self._rows = head.weight[[self.prompt.true_id, self.prompt.false_id]].detach()

    @property
    def max_length(self) -> int:
        return self.prompt.max_length

    @property
    def device(self):
        return next(self.model.parameters()).device

    def parameters(self):
        return self.model.parameters()

    def lengths(self, pairs: list[tuple[str, str]], *, chunk: int = 4096) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.int32)
        for start in range(0, len(pairs), chunk):
            part = self.prompt.encode(pairs[start : start + chunk])
            out[start : start + len(part)] = [len(ids) for ids in part]
        return out

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        input_ids, mask = self.prompt.collate(self.prompt.encode(pairs))
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self._rows is not None:
                hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state[:, -1]
                logits = hidden.float() @ self._rows.float().T
            else:
                logits = (
                    self.model(input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
                    .logits[:, -1, [self.prompt.true_id, self.prompt.false_id]]
                    .float()
                )
        return (logits[:, 0] - logits[:, 1]).cpu().numpy().astype(np.float32)


def load_scorer(source: str, *, max_length: int, device: str, dtype: str) -> MxbaiScorer:
    """An mxbai-rerank v2 model from a folder (the hub layout) or a hub id, on `device` in `dtype` ("fp32", "bf16", "fp16").

    Raises `ValueError` when the folder is not a causal LM; other load errors propagate for the caller's mapping.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    architectures = [str(a) for a in getattr(config, "architectures", None) or []]
    if not any(a.endswith("ForCausalLM") for a in architectures):
        raise ValueError(f"its config.json names {architectures or 'no architecture'}, not a *ForCausalLM (mxbai-rerank v2 is a Qwen2ForCausalLM)")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=False)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    return MxbaiScorer(model, tokenizer, max_length=max_length)
