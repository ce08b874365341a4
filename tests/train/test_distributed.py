"""The training loop in several processes (DDP over gloo, 2 CPU processes): the same
weights as one process at the same global batch, and checkpoints that resume on either
count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from potstill.data import Blocks
from potstill.models.student import layer_subset
from potstill.tasks.causal_lm import CausalLM
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.train.settings import TrainConfig
from potstill.util.distributed import World, current_world, my_share, on_main
from potstill.util.errors import PotstillError
from tests.conftest import free_port, make_llama
from tests.train.test_loop import HINTON, _run

VOCAB = 64
# Summation order differs between one process and two (each sums its share, then gloo adds
# the two): float32 rounding, carried through 4 AdamW steps.
ATOL = 2e-5


def _setup() -> tuple[Blocks, torch.nn.Module, torch.nn.Module]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (16, 12), generator=g)
    labels = ids.clone()
    labels[::3, :5] = -100  # uneven valid-token counts across the processes' shares
    teacher = make_llama(VOCAB, layers=3, seed=1).eval()
    return Blocks(ids, labels), teacher, layer_subset(teacher, [0, 2])


def _train(folder: Path, *, until: int | None, resume: bool) -> torch.nn.Module:
    """test_loop's 4 steps of 4 examples, in 2 micro-batches, checkpointed every 2."""
    blocks, teacher, student = _setup()
    accumulated = {"grad_accum": 2, "checkpoint_every": 2}
    _run(student, blocks, teacher, folder, resume=resume, until=until, **accumulated)
    return student


def _worker(rank: int, size: int, port: int, folder: str, until: int | None, resume: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    student = _train(Path(folder), until=until, resume=resume)
    if rank == 0:
        save_file(
            {k: v.clone().contiguous() for k, v in student.state_dict().items()},
            str(Path(folder) / "final.safetensors"),
        )
    torch.distributed.destroy_process_group()


def _two_processes(folder: Path, *, until: int | None = None, resume: bool = False) -> dict:
    mp.spawn(_worker, args=(2, free_port(), str(folder), until, resume), nprocs=2, join=True)
    return load_file(str(folder / "final.safetensors"))


def _one_process(folder: Path, *, until: int | None = None, resume: bool = False) -> dict:
    student = _train(folder, until=until, resume=resume)
    return {k: v.clone() for k, v in student.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= ATOL, f"largest weight difference {worst:.2e} > {ATOL:.0e}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """One process, 4 steps, no interruption: the reference."""
    return _one_process(tmp_path_factory.mktemp("one"))


def test_two_processes_equal_one(straight, tmp_path):
    two = _two_processes(tmp_path)
    _assert_same(straight, two)
    # and training moved the weights: the comparison is not of two untouched models
    _, _, untouched = _setup()
    assert any(not torch.equal(straight[k], v) for k, v in untouched.state_dict().items())
    # rank 0 alone wrote the metrics: one row per step, the global loss
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4


def test_checkpoint_of_two_processes_resumes_in_one(straight, tmp_path):
    _two_processes(tmp_path, until=2)
    assert '"step": 2' in (tmp_path / "ckpt" / "state.json").read_text()
    _assert_same(straight, _one_process(tmp_path, resume=True))


def test_checkpoint_of_one_process_resumes_in_two(straight, tmp_path):
    _one_process(tmp_path, until=2)
    _assert_same(straight, _two_processes(tmp_path, resume=True))


def test_a_batch_that_does_not_split_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    blocks, teacher, student = _setup()
    with pytest.raises(PotstillError, match="batch_size 4 does not split over 3 processes"):
        train(
            student,
            blocks,
            CausalLM(HINTON),
            TrainConfig(steps=1, batch_size=4),
            teacher=LiveTeacher(teacher),
            name="student",
            checkpoint_dir=tmp_path / "ckpt",
            metrics_path=tmp_path / "m.jsonl",
        )


def test_world_without_a_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert current_world() == World(0, 1, 0)
    assert on_main(lambda: 7) == 7
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(PotstillError, match="inconsistent"):
        current_world()


def test_shards_cover_every_item_once():
    items = list(range(11))
    shares = [my_share(items, World(r, 3, r)) for r in range(3)]
    assert sorted(item for share in shares for item in share) == items
