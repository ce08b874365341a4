"""Label scoring: the teacher's log-likelihood of every label's full token sequence.

`score_labels` runs the prompt's shared prefix once and reuses its key/value cache;
`score_labels_naive` runs the whole sequence once per text and label. Both use the same
ids (`potstill.synth.prompt`), so they agree to float rounding; the naive path is the
tests' reference and the benchmark's baseline. The soft label is the softmax over the
labels' log-likelihoods, calibrated as `potstill.synth.calibration` says (its functions
are exported here too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from potstill.synth.calibration import (
    Calibration,
    apply_calibration,
    class_prior,
    em_prior,
    fit_calibration,
    label_shift,
    softmax,
)
from potstill.synth.prompt import (
    DEFAULT_INSTRUCTION,
    Example,
    Label,
    LabelPrompt,
    LabelSpec,
    build_prompt,
)
from potstill.util.errors import PotstillError
from potstill.util.modes import eval_mode

__all__ = [
    "DEFAULT_INSTRUCTION",
    "Calibration",
    "Example",
    "Label",
    "LabelPrompt",
    "LabelScores",
    "LabelSpec",
    "apply_calibration",
    "build_prompt",
    "calibrate",
    "class_prior",
    "em_prior",
    "fit_calibration",
    "label_shift",
    "score_labels",
    "score_labels_naive",
]


@dataclass
class LabelScores:
    """Per text, the log-likelihood of every label's full token sequence.

    ``logprobs`` is (N, L) float64; ``truncated`` counts the texts cut to fit the context.
    """

    logprobs: np.ndarray
    label_names: list[str]
    truncated: int = 0

    def softmax(self) -> np.ndarray:
        """The soft labels: (N, L), each row sums to 1."""
        return softmax(self.logprobs)

    def argmax(self) -> np.ndarray:
        """The teacher's hard label per text: (N,) indices into ``label_names``."""
        return self.logprobs.argmax(axis=1)


def score_labels(
    model: torch.nn.Module,
    prompt: LabelPrompt,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> LabelScores:
    """Score every label for every text, the prefix's key/value cache computed once.

    Per batch of texts: one forward of the texts (closing part included) on the prefix
    cache repeated across the batch, which scores each label's first token; then the cache
    (prefix + texts) is repeated once per label and one forward of all the labels'
    remaining tokens scores the rest. Texts are batched in order of length to cut padding.
    """
    _refuse_empty(texts)
    rows, truncated = _fit_all(model, prompt, texts, max_length)
    with torch.inference_mode(), eval_mode(model):
        logprobs = _score_with_prefix_cache(model, prompt, rows, batch_size)
    return LabelScores(logprobs, prompt.label_names, truncated)


def score_labels_naive(
    model: torch.nn.Module,
    prompt: LabelPrompt,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
) -> LabelScores:
    """The reference: one forward over ``prefix + text + label`` per text and label, the
    label tokens' log-probabilities summed. Same ids and truncation as `score_labels`."""
    _refuse_empty(texts)
    rows, truncated = _fit_all(model, prompt, texts, max_length)
    device = _device(model)
    logprobs = np.zeros((len(rows), len(prompt.label_ids)))
    with torch.inference_mode(), eval_mode(model):
        for i, text_ids in enumerate(rows):
            for j, label in enumerate(prompt.label_ids):
                seq = torch.tensor([prompt.prefix_ids + text_ids + label], device=device)
                # The last len(label)+1 positions; the one before each label token predicts it.
                logits = model(input_ids=seq, use_cache=False, logits_to_keep=len(label) + 1).logits
                token_logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # (len, V)
                picked = token_logprobs.gather(1, torch.tensor(label, device=device)[:, None])
                logprobs[i, j] = picked.double().sum().item()
    return LabelScores(logprobs, prompt.label_names, truncated)


def calibrate(
    model: torch.nn.Module,
    prompt: LabelPrompt,
    content_free: Sequence[str] = ("N/A", "", "[MASK]"),
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """The label prior: the mean soft label on content-free inputs, (L,) summing to 1.

    Contextual calibration, Zhao et al. 2021, "Calibrate Before Use".
    """
    rows = [prompt.text_ids(text) for text in content_free]
    with torch.inference_mode(), eval_mode(model):
        logprobs = _score_with_prefix_cache(model, prompt, rows, batch_size)
    prior = softmax(logprobs).mean(axis=0)
    return prior / prior.sum()


# --- the fast path ---------------------------------------------------------------------


def _score_with_prefix_cache(
    model: torch.nn.Module, prompt: LabelPrompt, rows: list[list[int]], batch_size: int
) -> np.ndarray:
    device = _device(model)
    prefix_kv = _prefix_kv(model, prompt.prefix_ids, device)
    logprobs = np.zeros((len(rows), len(prompt.label_ids)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for start in range(0, len(order), max(1, batch_size)):
        chosen = order[start : start + batch_size]
        batch = [rows[i] for i in chosen]
        logprobs[chosen] = _score_batch(model, prompt, prefix_kv, batch, device)
    return logprobs


def _prefix_kv(model: torch.nn.Module, prefix_ids: list[int], device: torch.device) -> list:
    """The prefix's keys and values per layer, each (1, heads, P, head_dim)."""
    cache = DynamicCache()
    ids = torch.tensor([prefix_ids], device=device)
    positions = torch.arange(len(prefix_ids), device=device)[None]
    model(input_ids=ids, position_ids=positions, past_key_values=cache, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _score_batch(
    model: torch.nn.Module,
    prompt: LabelPrompt,
    kv: list,
    batch: list[list[int]],
    device: torch.device,
) -> np.ndarray:
    """(B, L) log-likelihoods for B texts (each ``text_ids``) and the prompt's L labels;
    ``kv`` is the prefix's keys and values per layer."""
    n_texts, n_labels, n_prefix = len(batch), len(prompt.label_ids), len(prompt.prefix_ids)
    # 1. The texts on the prefix cache; each text's last position predicts labels' token 0.
    text_ids, text_mask = _pad(batch, device)  # (B, T)
    text_lens = text_mask.sum(1)  # (B,)
    # A fresh cache per batch: updates concatenate, so the prefix tensors are never written.
    repeated = [(k.expand(n_texts, -1, -1, -1), v.expand(n_texts, -1, -1, -1)) for k, v in kv]
    cache = DynamicCache(ddp_cache_data=repeated)  # per layer (B, heads, P, head_dim)
    prefix_mask = torch.ones(n_texts, n_prefix, dtype=torch.long, device=device)
    positions = n_prefix + torch.arange(text_ids.shape[1], device=device)[None].expand(n_texts, -1)
    keep = torch.unique(text_lens - 1)  # sorted; only these positions' logits are needed
    logits = model(
        input_ids=text_ids,
        attention_mask=torch.cat([prefix_mask, text_mask], 1),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    ).logits  # (B, len(keep), V)
    last = torch.searchsorted(keep, text_lens - 1)  # (B,)
    first = torch.log_softmax(logits[torch.arange(n_texts), last].float(), dim=-1)  # (B, V)

    # 2. Every label's remaining tokens, one row per (text, label), on the repeated cache.
    cache.batch_repeat_interleave(n_labels)
    label_inputs, label_mask = _pad([ids[:-1] for ids in prompt.label_ids] * n_texts, device)
    seen_mask = torch.cat([prefix_mask, text_mask], 1).repeat_interleave(n_labels, 0)
    row_lens = text_lens.repeat_interleave(n_labels)  # (B*L,)
    offsets = torch.arange(label_inputs.shape[1], device=device)[None]
    logits = model(
        input_ids=label_inputs,
        attention_mask=torch.cat([seen_mask, label_mask], 1),
        position_ids=n_prefix + row_lens[:, None] + offsets,
        past_key_values=cache,
        use_cache=False,
    ).logits  # (B*L, ℓ-1, V)
    rest = torch.log_softmax(logits.float(), dim=-1)

    scores = np.zeros((n_texts, n_labels))
    for b in range(n_texts):
        for j, label in enumerate(prompt.label_ids):
            targets = torch.tensor(label[1:], device=device)
            tail = rest[b * n_labels + j, : len(label) - 1].gather(1, targets[:, None])
            scores[b, j] = first[b, label[0]].double().item() + tail.double().sum().item()
    return scores


# --- helpers ---------------------------------------------------------------------------


def _fit_all(
    model: torch.nn.Module, prompt: LabelPrompt, texts: Sequence[str], max_length: int | None
) -> tuple[list[list[int]], int]:
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    fitted = [prompt.fit(text, limit) for text in texts]
    return [ids for ids, _ in fitted], sum(cut for _, cut in fitted)


def _refuse_empty(texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        if not text.strip():
            raise PotstillError(f"text {i} is empty; drop empty rows from the data to label")


def _pad(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their mask, both (N, max length)."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
