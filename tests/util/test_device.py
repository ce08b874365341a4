"""Which device and precision a run uses; a device that is not there is a user error."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from potstill.config import Recipe
from potstill.util.device import autocast_dtype, resolve_device
from potstill.util.errors import PotstillError

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
no_mps = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has mps")


def test_cpu_is_the_cpu():
    assert resolve_device("cpu") == CPU


@no_cuda
@no_mps
def test_auto_falls_back_to_the_cpu():
    assert resolve_device("auto") == CPU
    assert resolve_device() == CPU


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_user_error_with_the_fix(name):
    with pytest.raises(PotstillError) as e:
        resolve_device(name)
    message = str(e.value)
    assert message.startswith(f"device={name}: this machine has no CUDA GPU")
    assert "use device=cpu or device=auto" in message and "\n" not in message


@no_mps
def test_mps_where_there_is_none_is_a_user_error():
    with pytest.raises(
        PotstillError, match="device=mps: mps is not available here; use device=cpu"
    ):
        resolve_device("mps")


@pytest.mark.parametrize(
    ("precision", "expected"),
    [("auto", None), ("fp32", None), ("bf16", torch.bfloat16)],
)
def test_precision_on_the_cpu(precision, expected):
    assert autocast_dtype(precision, CPU) is expected


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(PotstillError, match=r"train\.precision=fp16 needs a GPU; use fp32 or bf16"):
        autocast_dtype("fp16", CPU)


def test_explicit_gpu_precisions_are_taken_as_given():
    cuda = torch.device("cuda")  # a device object needs no GPU
    assert autocast_dtype("fp16", cuda) is torch.float16
    assert autocast_dtype("bf16", cuda) is torch.bfloat16
    assert autocast_dtype("fp32", cuda) is None


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:3", "mps"])
def test_the_recipe_takes_device_names(device):
    assert Recipe(device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "tpu", ""])
def test_the_recipe_refuses_other_device_names(device):
    with pytest.raises(ValidationError, match="give auto, cpu, cuda, cuda:N or mps"):
        Recipe(device=device)
