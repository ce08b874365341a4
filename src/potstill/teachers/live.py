"""A local teacher model run forward (no grad) for each batch."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from potstill.data.batch import Batch
from potstill.signals import DenseSignal, SignalRequest, TeacherOutputs
from potstill.util.errors import PotstillError


class LiveTeacher:
    """Runs ``model`` on each batch and hands back what the request asks for.

    Args:
        model: a causal LM (``model(input_ids=…).logits`` is ``(B, L, V)``).
        prefix_ids: optional ``(P,)`` token ids the teacher reads before every example
            and the student never sees (a prompt, an instruction). Outputs are cut back
            to the student's positions: teacher position ``P + t`` is student position
            ``t``; attention maps keep only the student's queries and keys.
        autocast_dtype: run the forward under ``torch.autocast`` in this dtype (GPU
            precision); None runs in the model's own dtype.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        prefix_ids: torch.Tensor | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if prefix_ids is not None and (prefix_ids.dim() != 1 or prefix_ids.dtype != torch.long):
            raise ValueError(
                f"prefix_ids must be (P,) long token ids, got {tuple(prefix_ids.shape)} "
                f"{prefix_ids.dtype}"
            )
        self.model = model
        self.prefix_ids = prefix_ids
        self.autocast_dtype = autocast_dtype

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def outputs(self, batch: Batch, request: SignalRequest) -> TeacherOutputs:
        """Run the teacher on ``batch`` (see `TeacherSource.outputs`)."""
        if request.empty:
            return TeacherOutputs()
        device = self.device
        input_ids = batch.input_ids.to(device)  # (B, L)
        mask = None if batch.packed else batch.attention_mask.to(device)
        skip = 0
        if self.prefix_ids is not None:
            skip = self.prefix_ids.numel()
            prefix = self.prefix_ids.to(device).expand(input_ids.shape[0], -1)  # (B, P)
            input_ids = torch.cat([prefix, input_ids], dim=1)  # (B, P + L)
            if mask is not None:
                mask = torch.cat([torch.ones_like(prefix, dtype=torch.bool), mask], dim=1)
        kwargs = {}
        if request.hidden_layers:
            kwargs["output_hidden_states"] = True
        if request.attention_layers:
            kwargs["output_attentions"] = True
        if mask is not None:
            kwargs["attention_mask"] = mask
        autocast = (
            torch.autocast(device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with torch.no_grad(), autocast:
            out = self.model(input_ids=input_ids, **kwargs)
        distributions = None
        if request.distributions:
            logits = out.logits[:, skip:-1]  # (B, L − 1, V)
            _check_finite(logits, batch)
            distributions = DenseSignal(logits)
        hidden = {layer: out.hidden_states[layer][:, skip:] for layer in request.hidden_layers}
        attentions = {}
        if request.attention_layers:
            if not out.attentions or out.attentions[0] is None:  # sdpa gives () or None
                raise ValueError(
                    "the teacher returned no attention maps: load it with "
                    'attn_implementation="eager" to distil attention'
                )
            attentions = {
                layer: out.attentions[layer][:, :, skip:, skip:]  # (B, heads, L, L)
                for layer in request.attention_layers
            }
        return TeacherOutputs(distributions, hidden, attentions)


def _check_finite(logits: torch.Tensor, batch: Batch) -> None:
    """Refuse teacher logits ``(B, T, V)`` holding NaN or +inf (corrupt weights, or an
    overflow in low precision): a student learns nothing from them, a cache cannot store
    them. One max per batch: it is NaN when any entry is."""
    if logits.numel() == 0 or bool(torch.isfinite(logits.amax())):
        return
    bad = ~torch.isfinite(logits.flatten(1).amax(1))  # (B,)
    blocks = batch.index.cpu()[bad.nonzero().flatten()[:3].cpu()].tolist()
    raise PotstillError(
        f"the teacher's logits hold NaN or infinite values (blocks {blocks}): its weights "
        "are corrupt, or it overflows in train.precision; check the teacher model, or run it "
        "in float32 (train.precision=fp32)"
    )
