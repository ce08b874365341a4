"""How well a model without the context reproduces the teacher with it: top-1 agreement
and KL(teacher ‖ model) on the response tokens, and what the context costs per call."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from potstill.data.chat import ChatExamples
from potstill.signals import SignalRequest
from potstill.teachers.context import ContextTeacher
from potstill.util.modes import eval_mode
from potstill.util.tokens import IGNORE_INDEX


@torch.no_grad()
def context_agreement(
    model: nn.Module, teacher: ContextTeacher, examples: ChatExamples, *, batch_size: int = 8
) -> dict[str, float]:
    """``model`` reading the student's view against ``teacher`` reading its own, over every
    response token of ``examples`` (the teacher's examples must be these).

    Returns ``top1`` (share of tokens whose argmaxes match), ``kl`` (mean
    KL(teacher ‖ model), nats per token) and ``tokens`` (how many were compared).
    """
    device = next(model.parameters()).device
    matches, kl_sum, count = 0.0, 0.0, 0
    request = SignalRequest(distributions=True)
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            index = torch.arange(start, min(start + batch_size, len(examples)))
            batch = examples.batch(index)
            target = teacher.outputs(batch, request).distributions.logits  # (B, L-1, V)
            logits = model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
            ).logits[:, :-1]  # (B, L-1, V)
            keep = (batch.labels[:, 1:] != IGNORE_INDEX).to(device)  # (B, L-1)
            t = torch.log_softmax(target[keep].double(), dim=-1)  # (N, V)
            s = torch.log_softmax(logits[keep].double(), dim=-1)  # (N, V)
            matches += float((t.argmax(-1) == s.argmax(-1)).sum())
            kl_sum += float((t.exp() * (t - s)).sum())
            count += int(keep.sum())
    return {"top1": matches / max(count, 1), "kl": kl_sum / max(count, 1), "tokens": count}


@torch.no_grad()
def prefill_seconds(model: nn.Module, prompts: list[list[int]], *, repeats: int = 3) -> float:
    """Median seconds of one batch-1 forward over a prompt, averaged over ``prompts``: the
    time a call spends reading its prompt before the first new token."""
    device = next(model.parameters()).device
    per_prompt = []
    with eval_mode(model):
        model(input_ids=torch.tensor([prompts[0]], device=device))  # warm-up
        for ids in prompts:
            seq = torch.tensor([ids], device=device)
            times = []
            for _ in range(repeats):
                begun = time.perf_counter()
                model(input_ids=seq)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - begun)
            per_prompt.append(statistics.median(times))
    return statistics.fmean(per_prompt)
