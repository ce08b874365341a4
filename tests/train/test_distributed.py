"""The training loop in several processes (DDP over gloo, 2 CPU processes): the same
weights as one process at the same global batch, and checkpoints that resume on either
count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from potstill.data import Blocks
from potstill.models.student import layer_subset
from potstill.tasks.causal_lm import CausalLM, heldout_loss
from potstill.teachers import LiveTeacher
from potstill.train.loop import read_metrics, train
from potstill.train.settings import TrainConfig
from potstill.util.distributed import World, current_world, my_share, on_main
from potstill.util.errors import PotstillError
from tests.conftest import free_port, leave_spawned, make_llama
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


def _train(
    folder: Path,
    *,
    until: int | None,
    resume: bool,
    parallel: str = "ddp",
    rollback: bool = False,
) -> torch.nn.Module:
    """test_loop's 4 steps of 4 examples, in 2 micro-batches, checkpointed every 2, with
    the held-out loss of 3 blocks every 2 steps (every process evaluates; FSDP needs them
    all for a forward). ``rollback``: a check every step that rises once, at step 2, so
    the run goes back to step 1 at half the lr (`potstill.train.rollback`)."""
    blocks, teacher, student = _setup()
    # clip 0.3: below the gradient norms, so clipping acts (on the whole norm) at every step
    accumulated = {"grad_accum": 2, "checkpoint_every": 2, "clip": 0.3, "parallel": parallel}
    evaluate = heldout_loss(blocks.input_ids[-3:], blocks.labels[-3:], batch_size=2)
    every = 2
    if rollback:
        checks = iter([5.0, 9.0] + [5.0] * 10)
        every = 1

        def evaluate(model):
            return next(checks)

    _run(
        student,
        blocks,
        teacher,
        folder,
        resume=resume,
        until=until,
        evaluate=evaluate,
        eval_every=every,
        **accumulated,
    )
    return student


def as_launched(rank: int, size: int, port: int) -> None:
    """This spawned process as a launcher would start it: its rank and the rendezvous in
    the environment, one thread."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def _worker(
    rank: int,
    size: int,
    port: int,
    folder: str,
    until: int | None,
    resume: bool,
    parallel: str,
    rollback: bool = False,
) -> None:
    as_launched(rank, size, port)
    student = _train(Path(folder), until=until, resume=resume, parallel=parallel, rollback=rollback)
    if rank == 0:
        save_file(
            {k: v.clone().contiguous() for k, v in student.state_dict().items()},
            str(Path(folder) / "final.safetensors"),
        )
    leave_spawned()


def _two_processes(
    folder: Path,
    *,
    until: int | None = None,
    resume: bool = False,
    parallel: str = "ddp",
    rollback: bool = False,
) -> dict:
    args = (2, free_port(), str(folder), until, resume, parallel, rollback)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    return load_file(str(folder / "final.safetensors"))


def _one_process(folder: Path, *, until: int | None = None, resume: bool = False) -> dict:
    student = _train(folder, until=until, resume=resume)
    return {k: v.clone() for k, v in student.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= ATOL, f"largest weight difference {worst:.2e} > {ATOL:.0e}"


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> tuple[dict, Path]:
    """One process, 4 steps, no interruption: the reference, and its folder."""
    folder = tmp_path_factory.mktemp("one")
    return _one_process(folder), folder


@pytest.fixture(scope="module")
def straight(straight_run) -> dict:
    return straight_run[0]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one(straight_run, tmp_path, parallel):
    straight, one = straight_run
    two = _two_processes(tmp_path, parallel=parallel)
    _assert_same(straight, two)
    # and training moved the weights: the comparison is not of two untouched models
    _, _, untouched = _setup()
    assert any(not torch.equal(straight[k], v) for k, v in untouched.state_dict().items())
    # rank 0 alone wrote the metrics: one row per step, with the global loss and gradient
    # norm (what clipping divides by: the norm of the summed, or sharded, gradients)
    rows, expected = read_metrics(tmp_path / "metrics.jsonl"), read_metrics(one / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert min(r["grad_norm"] for r in expected) > 0.3  # clipping acted at every step
    for got, want in zip(rows, expected, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
        if "heldout_loss" in want:
            assert got["heldout_loss"] == pytest.approx(want["heldout_loss"], rel=1e-5)
    assert [r["step"] for r in rows if "heldout_loss" in r] == [2, 4]
    assert [r["step"] for r in expected if "heldout_loss" in r] == [2, 4]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_of_two_processes_resumes_in_one(straight, tmp_path, parallel):
    _two_processes(tmp_path, until=2, parallel=parallel)
    assert '"step": 2' in (tmp_path / "ckpt" / "state.json").read_text()
    _assert_same(straight, _one_process(tmp_path, resume=True))


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_of_one_process_resumes_in_two(straight, tmp_path, parallel):
    _one_process(tmp_path, until=2)
    _assert_same(straight, _two_processes(tmp_path, resume=True, parallel=parallel))


@pytest.mark.parametrize(("first", "then"), [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_checkpoint_resumes_in_the_other_mode(straight, tmp_path, first, then):
    """A checkpoint holds full tensors whatever made it: DDP's resumes under FSDP, and
    FSDP's (gathered from shards) under DDP."""
    _two_processes(tmp_path, until=2, parallel=first)
    _assert_same(straight, _two_processes(tmp_path, resume=True, parallel=then))


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_rollback_in_two_processes_equals_one(straight, tmp_path, parallel):
    """Every process sees the same check and goes back to the same good point: under FSDP
    that point holds each process's shards."""
    one = _train(tmp_path / "one", until=None, resume=False, rollback=True)
    one = {k: v.clone() for k, v in one.state_dict().items()}
    rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()]
    assert [(r["step"], r["from_step"]) for r in rows if "event" in r] == [(1, 2)]
    assert max(float((one[k] - straight[k]).abs().max()) for k in one) > 100 * ATOL
    _assert_same(one, _two_processes(tmp_path / "two", parallel=parallel, rollback=True))


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


def _first_call_worker(rank: int, port: int, folder: str) -> None:
    as_launched(rank, 2, port)
    marks = Path(folder) / "marks"

    def work() -> int:
        with open(marks, "a") as f:
            f.write(f"{rank}\n")
        return 7

    assert on_main(work) == 7  # the first collective: it joins the group itself
    leave_spawned()


def test_on_main_joins_the_group_before_its_first_use(tmp_path):
    """A helper called before anything else has joined the launcher's group (a run folder
    prepared first thing) still runs once, on rank 0, not once per process."""
    mp.spawn(_first_call_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "marks").read_text() == "0\n"
