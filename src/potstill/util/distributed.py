"""Several processes, one code path: data parallel under ``torchrun`` or ``accelerate launch``.

The launcher starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous (``MASTER_ADDR``/``MASTER_PORT``); potstill only reads them. One process is a
world of size 1: the same code runs, and every collective below is then a no-op.

>>> world = current_world()  # no launcher here
>>> (world.rank, world.size, world.main, world.distributed)
(0, 1, True, False)
>>> all_sum(3.0)
3.0
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from potstill.util.errors import PotstillError, first_line

T = TypeVar("T")
S = TypeVar("S", list, torch.Tensor)  # what `my_share` slices


@dataclass(frozen=True)
class World:
    """This process's place among the launcher's processes."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PotstillError(f"{name}={value!r} is not an integer (set by the launcher)") from None


def launched_world() -> World:
    """The world the launcher's environment describes (size 1 without a launcher), without
    joining it: enough to check a setting against the number of processes."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise PotstillError(f"RANK={rank} and WORLD_SIZE={size} are inconsistent")
    return World(rank, size, _env_int("LOCAL_RANK", rank))


def current_world() -> World:
    """The launcher's world, its process group joined on the first call.

    The backend is NCCL when CUDA is there, gloo otherwise (CPU processes).
    """
    world = launched_world()
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        try:
            dist.init_process_group(backend, rank=world.rank, world_size=world.size)
        except (ValueError, RuntimeError) as e:
            raise PotstillError(
                f"WORLD_SIZE={world.size} but the processes could not meet ({first_line(e)}); "
                "start them with torchrun or accelerate launch"
            ) from e
        # The group's threads must stop before the interpreter does: left to the C++
        # destructors at exit, a rank could abort after finishing its work ("terminate
        # called without an active exception", seen under torchrun in the suite).
        atexit.register(_leave_group)
    return world


def _active() -> bool:
    """Whether collectives are needed; under a launcher the first one joins the group, so
    no helper below runs alone on a rank that has not met the others yet."""
    if launched_world().distributed:
        current_world()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(value: float) -> float:
    """The sum of ``value`` over every process (float64 on the wire)."""
    if not _active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())


def all_sum_dict(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over every process; every process must pass the same keys."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def barrier() -> None:
    """Wait until every process gets here."""
    if _active():
        dist.barrier()


def on_main(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and hand its result to every process.

    An error on rank 0 is raised on every process (a `PotstillError` with the same
    message elsewhere), so no process is left waiting for a rank that gave up.
    """
    if not _active():
        return work()
    outcome: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            outcome[0] = work()
        except BaseException as e:  # handed to the others, then re-raised here
            outcome[1] = e
            _broadcast(outcome, error=True)
            raise
    _broadcast(outcome)
    result, error = outcome
    if error is not None:
        raise (
            PotstillError(str(error))
            if isinstance(error, PotstillError)
            else RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")
        )
    return result


def _broadcast(outcome: list[Any], *, error: bool = False) -> None:
    if error:  # an exception may not pickle: send its type and message
        exc = outcome[1]
        outcome[1] = exc if isinstance(exc, PotstillError) else RuntimeError(repr(exc))
    dist.broadcast_object_list(outcome, src=0)


def my_share(items: S, world: World) -> S:
    """This process's share of ``items`` (a list, or a tensor along its first dimension):
    every ``size``-th one from ``rank`` on; all of them in one process.

    >>> my_share(list(range(7)), World(rank=1, size=3, local_rank=1))
    [1, 4]
    >>> my_share(torch.arange(4), World(rank=0, size=2, local_rank=0))
    tensor([0, 2])
    """
    return items[world.rank :: world.size]


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this process with ``code`` once its work is done: flush, leave the process
    group, then exit without the interpreter's teardown, where the group's C++ threads,
    left to static destructors, sometimes abort a rank that finished its work ("terminate
    called without an active exception"; seen under torchrun and under ``mp.spawn``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    _leave_group()
    os._exit(code)
