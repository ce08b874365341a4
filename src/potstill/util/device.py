"""Which device and precision a run uses."""

from __future__ import annotations

import torch

from potstill.util.errors import PotstillError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU, else Apple's mps, else the CPU; others as given.

    A device that is not there is a user error, named with the fix.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PotstillError(
                f"device={name}: this machine has no CUDA GPU (or torch is a CPU build); "
                "use device=cpu or device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PotstillError(
                f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here; "
                "use cuda:0 … or device=auto"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PotstillError(f"device={name}: mps is not available here; use device=cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The ``torch.autocast`` dtype for ``train.precision`` on ``device``; None = fp32.

    ``auto`` is bf16 on a GPU that supports it (else fp16) and fp32 on the CPU, where
    bf16 matmuls are far slower than fp32 on the machines potstill is measured on.

    >>> autocast_dtype("auto", torch.device("cpu")) is None
    True
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and precision == "fp16":
        raise PotstillError("train.precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
