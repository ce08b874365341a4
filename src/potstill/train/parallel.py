"""How the training objective is spread over the launcher's processes: one process, DDP or
FSDP, behind one small interface so that the loop does not care which.

- **One process**: the objective itself.
- **DDP** (``train.parallel: ddp``): every process holds the whole student; gradients are
  summed across processes once per step.
- **FSDP** (``train.parallel: fsdp``, FSDP2's ``fully_shard``): every process holds a
  ``1/N`` shard of each parameter, its gradient and its optimizer state; a layer's full
  weights exist only while it runs. For students that do not fit one device.

Under FSDP the loop trains a *twin* of the student: built on the meta device (no memory),
sharded layer by layer (the model's ``_no_split_modules``, as accelerate does) and then
filled from the caller's model. The caller's model stays whole on the host: checkpoints
and the end of training gather the trained weights back into it, one tensor at a time,
so what is saved, and what the caller gets back, is an ordinary model in every mode.
Checkpoints hold full tensors in one format, so they resume under any mode and count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from potstill.util.distributed import World
from potstill.util.errors import PotstillError
from potstill.util.log import log

if TYPE_CHECKING:
    from potstill.train.protocols import Task

Mode = Literal["ddp", "fsdp"]


class Objective(nn.Module):
    """The student and the modules trained beside it, as one module whose forward is the
    task's loss of a micro-batch: what DDP and FSDP wrap, so their hooks see every trained
    parameter however the task runs the student (a fused head calls the decoder and the
    output layer separately)."""

    def __init__(self, modules: nn.ModuleDict, task: Task) -> None:
        super().__init__()
        self.trained = modules
        self.task = task

    def forward(
        self, batch: Any, teacher: Any, num_tokens: int, *, call: Callable | None = None
    ) -> Any:
        """The task's loss of a micro-batch; or, given ``call``, ``call(student)``: a
        read-only pass (held-out loss) that goes through this forward so that FSDP gathers
        the parameters this module holds itself (embeddings, final norm)."""
        if call is not None:
            return call(self.trained["student"])
        return self.task.loss(self.trained["student"], batch, teacher, num_tokens=num_tokens)


class Spread:
    """The objective in one process or under DDP: the trained modules are the caller's."""

    def __init__(self, objective: nn.Module, trained: nn.ModuleDict) -> None:
        self.objective = objective  # what a micro-batch's forward and backward go through
        self.trained = trained  # whose parameters the optimizer updates

    def no_sync(self, *, last: bool) -> AbstractContextManager[object]:
        """Skip the gradient exchange on all but a step's last micro-batch."""
        if last or not hasattr(self.objective, "no_sync"):
            return nullcontext()
        return self.objective.no_sync()

    def call(self, fn: Callable[[nn.Module], Any]) -> Any:
        """``fn`` on the student as it trains now, in every process (no gradients)."""
        return fn(self.trained["student"])

    def gather(self) -> None:
        """Bring the trained weights into the caller's modules (already there)."""

    def scatter(self) -> None:
        """Load the caller's modules' weights into the trained ones (the same here)."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state with full tensors, as `torch.optim.Optimizer.state_dict`."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        optimizer.load_state_dict(saved)


class Sharded(Spread):
    """The objective under FSDP2: a sharded twin of the caller's modules (see the module
    docstring)."""

    def __init__(
        self, objective: nn.Module, trained: nn.ModuleDict, host: nn.ModuleDict, world: World
    ) -> None:
        super().__init__(objective, trained)
        self.host = host
        self.world = world

    def no_sync(self, *, last: bool) -> AbstractContextManager[object]:
        return _gradient_sync(self.objective, enabled=last)

    def call(self, fn: Callable[[nn.Module], Any]) -> Any:
        # Through the root's forward: each block gathers its own shards as it runs, but the
        # root's parameters are gathered only by the root's hooks. Every process must come.
        # The root keeps its gathered parameters after a forward (they are usually needed
        # for the backward at once) and, while it does, they are what its modules hold:
        # reshard, so the parameters seen next (a rollback's good point) are the shards.
        try:
            return self.objective(None, None, 0, call=fn)
        finally:
            self.objective.reshard()

    def gather(self) -> None:
        from torch.distributed.tensor import DTensor

        twins = dict(self.trained.named_parameters())
        with torch.no_grad():
            for name, param in self.host.named_parameters():
                twin = twins[name]
                full = twin.full_tensor() if isinstance(twin, DTensor) else twin
                param.copy_(full.to(param.device))

    def scatter(self) -> None:
        twins = dict(self.trained.named_parameters())
        with torch.no_grad():
            for name, param in self.host.named_parameters():
                _local(twins[name]).copy_(_local(_shard_like(param, twins[name])))

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """As one process's, gathered one tensor at a time onto the host; complete on rank 0
        (which writes it), its tensors left out on the other ranks."""
        from torch.distributed.tensor import DTensor

        keep = self.world.main
        saved = optimizer.state_dict()  # integer-keyed, as in one process; values sharded
        state: dict = {}
        for index, entry in saved["state"].items():
            state[index] = {}
            for key, value in entry.items():
                full = value.full_tensor() if isinstance(value, DTensor) else value  # collective
                if keep:
                    state[index][key] = full.cpu()
        saved["state"] = state
        return saved

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded = dict(saved)
        sharded["state"] = {
            index: {
                key: _shard_like(value, params[int(index)])
                if value.dim() and value.shape == params[int(index)].shape
                else value
                for key, value in entry.items()
            }
            for index, entry in saved["state"].items()
        }
        optimizer.load_state_dict(sharded)


def spread(
    objective: Objective, world: World, device: torch.device | str, mode: Mode = "ddp"
) -> Spread:
    """``objective`` ready to train in this world: itself in one process, else wrapped in
    DDP or sharded with FSDP2 (``mode``). Gradients are summed over the processes, not
    averaged: each process's loss is already divided by the step's global token count."""
    if not world.distributed:
        return Spread(objective, objective.trained)
    if mode == "fsdp":
        return _fully_shard(objective, world, device)
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = torch.device(device).type == "cuda"
    wrapped = DistributedDataParallel(
        objective, device_ids=[torch.device(device).index or 0] if on_gpu else None
    )
    # DDP has broadcast rank 0's weights to every process; the hook sums their gradients.
    wrapped.register_comm_hook(None, _sum_gradients)
    return Spread(wrapped, objective.trained)


def _sum_gradients(_state, bucket):  # unannotated: DDP checks annotations by identity
    """DDP communication hook: the sum of the processes' gradients (a ``GradBucket`` in,
    a future of the summed tensor out), not their mean."""
    import torch.distributed as dist

    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda f: f.value()[0])


def _fully_shard(objective: Objective, world: World, device: torch.device | str) -> Sharded:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    host = objective.trained
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise PotstillError(f"train.parallel fsdp runs on CPU or CUDA devices, not {kind}")
    mesh = init_device_mesh(kind, (world.size,))
    # The twin's parameters on the meta device (nothing allocated); buffers copied as they
    # are (rotary tables and the like are small, and not all of them are in a state dict).
    memo: dict[int, Any] = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in host.parameters()
    }
    # The modules the task holds (a causal LM's projections) are copied with the student,
    # through the same memo: the twin's task holds the twin's.
    task = copy.copy(objective.task)
    held = {k: v for k, v in vars(task).items() if isinstance(v, nn.Module)}
    modules, held = copy.deepcopy((host, held), memo)
    for name, module in held.items():
        object.__setattr__(task, name, module)
    twin = Objective(modules, task)
    buffers = {name: b.detach().clone() for name, b in twin.named_buffers()}
    blocks = _block_classes(twin.trained["student"])
    blocks_sharded = [m for m in twin.trained.modules() if type(m).__name__ in blocks]
    for module in blocks_sharded:
        fully_shard(module, mesh=mesh)
    # The root holds the rest (embeddings, final norm, tied output layer, projections): a
    # tied output layer must share its embedding's group.
    fully_shard(twin, mesh=mesh)
    for module in twin.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum, not mean,
            module.set_force_sum_reduction_for_comms(True)  # as a plain SUM (gloo has no other)
    twin.to_empty(device=torch.device(device))
    with torch.no_grad():
        for name, value in twin.named_buffers():
            value.copy_(buffers[name])
    sharded = Sharded(twin, twin.trained, host, world)
    sharded.scatter()
    local = sum(_local(p).numel() for p in twin.parameters())
    whole = sum(p.numel() for p in host.parameters())
    log(
        f"FSDP over {world.size} processes, {len(blocks_sharded)} blocks sharded: this process "
        f"holds {local:,} of {whole:,} parameter values ({local / whole:.1%}), with their "
        "gradients and optimizer state"
    )
    return sharded


def _block_classes(student: nn.Module) -> set[str]:
    """The class names of the model's repeated blocks (each one FSDP unit): a transformers
    model lists them in ``_no_split_modules``; a PEFT model is looked through."""
    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    return set(getattr(base, "_no_split_modules", None) or ())


def _local(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return param.to_local() if isinstance(param, DTensor) else param


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of the full tensor ``full``, laid out as the parameter ``like``
    (a DTensor); ``full`` itself where ``like`` is not sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full.to(like.device)
    return distribute_tensor(
        full.to(device=like.device, dtype=like.dtype),
        like.device_mesh,
        like.placements,
        src_data_rank=None,  # every process holds the full tensor: each keeps its shard
    )


@contextmanager
def _gradient_sync(objective: nn.Module, *, enabled: bool):
    """FSDP's ``no_sync``: without a sync the shards' gradients accumulate unreduced."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in objective.modules() if isinstance(m, FSDPModule)]
    if enabled:
        yield
        return
    for module in modules:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_requires_gradient_sync(True, recurse=False)
