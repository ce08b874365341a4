"""FSDP through the training loop's one code path (2 CPU processes, gloo): parameters,
gradients and optimizer state really are sharded, the caller's model is left whole and
gets the trained weights back, and students with projections or LoRA adapters train as in
one process; so do those with a frozen embedding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from potstill.losses import LossTerm
from potstill.models.settings import StudentConfig
from potstill.models.student import build_student, layer_subset, wrap_adapter
from potstill.tasks.causal_lm import CausalLM
from potstill.tasks.causal_lm.step import prepare_inside
from potstill.teachers import LiveTeacher
from potstill.train.loop import train
from potstill.train.parallel import Objective, spread
from potstill.train.settings import TrainConfig
from potstill.util.distributed import current_world
from tests.conftest import free_port, leave_spawned
from tests.train.test_distributed import ATOL, _assert_same, _setup, as_launched
from tests.train.test_loop import HINTON


def _launch(worker, folder: Path, *args) -> None:
    mp.spawn(worker, args=(free_port(), str(folder), *args), nprocs=2, join=True)


def _shard_facts(rank: int, port: int, folder: str) -> None:
    """One FSDP step by hand through `spread`: what each process holds, written as JSON."""
    from torch.distributed.tensor import DTensor, Shard

    as_launched(rank, 2, port)
    blocks, teacher, student = _setup()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    task = CausalLM(HINTON)
    task.prepare(student, blocks.batch(torch.tensor([0])))
    parallel = spread(
        Objective(torch.nn.ModuleDict({"student": student}), task), current_world(), "cpu", "fsdp"
    )
    params = dict(parallel.trained.named_parameters())
    batch = blocks.batch(torch.tensor([rank, rank + 2]))
    outputs = LiveTeacher(teacher).outputs(batch, task.request)
    loss, _ = parallel.objective(batch, outputs, 10)
    loss.backward()
    optimizer = torch.optim.AdamW(parallel.trained.parameters(), lr=1e-2)
    optimizer.step()
    host_untouched = all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    parallel.gather()
    saved = parallel.optimizer_state(optimizer)
    facts = {
        "all_sharded": all(
            isinstance(p, DTensor) and p.placements == (Shard(0),) for p in params.values()
        ),
        "grads_sharded": all(isinstance(p.grad, DTensor) for p in params.values()),
        "local": sum(p.to_local().numel() for p in params.values()),
        "full": sum(p.numel() for p in params.values()),
        "state_local": sum(
            v.to_local().numel()
            for s in optimizer.state.values()
            for v in s.values()
            if isinstance(v, DTensor)
        ),
        "saved_full": sum(
            v.numel() for s in saved["state"].values() for k, v in s.items() if k != "step"
        ),
        "saved_on_cpu": all(
            v.device.type == "cpu" and not isinstance(v, DTensor)
            for s in saved["state"].values()
            for v in s.values()
        ),
        "host_untouched_until_gathered": host_untouched,
        "host_changed_after_gather": any(
            not torch.equal(before[k], v) for k, v in student.state_dict().items()
        ),
        "tied": student.lm_head.weight is student.model.embed_tokens.weight,
    }
    (Path(folder) / f"facts-{rank}.json").write_text(json.dumps(facts))
    leave_spawned()


def test_fsdp_shards_parameters_gradients_and_optimizer_state(tmp_path):
    _launch(_shard_facts, tmp_path)
    facts = [json.loads((tmp_path / f"facts-{r}.json").read_text()) for r in range(2)]
    for fact in facts:
        assert fact["all_sharded"] and fact["grads_sharded"]
        assert fact["host_untouched_until_gathered"] and fact["host_changed_after_gather"]
        assert fact["tied"]  # the caller's tied head is still tied to its embedding
        # Each process holds about half of every parameter (a dimension that does not split
        # evenly gives rank 0 the larger piece), and twice that in AdamW's two moments.
        assert 0.45 * fact["full"] <= fact["local"] <= 0.55 * fact["full"]
        assert fact["state_local"] == 2 * fact["local"]
    assert facts[0]["local"] + facts[1]["local"] == facts[0]["full"]
    # A checkpoint's optimizer state is whole on rank 0, which writes it (both moments of
    # every parameter, on the host); the other rank keeps none of it.
    assert facts[0]["saved_full"] == 2 * facts[0]["full"] and facts[0]["saved_on_cpu"]
    assert facts[1]["saved_full"] == 0


# --- students with projections and adapters ------------------------------------------------


def _student(kind: str, teacher: torch.nn.Module) -> tuple[torch.nn.Module, list, torch.nn.Module]:
    """(student, terms, projections) for a narrower fresh student matched on hidden states
    through a projection, a LoRA student, or a student whose tied embedding is frozen."""
    if kind == "inside":
        torch.manual_seed(3)
        student = build_student(
            StudentConfig(fresh={"hidden_size": 24, "num_layers": 2, "num_heads": 2}),
            teacher,
            None,
        )[0]
        hidden = LossTerm("hidden_mse", weight=0.5)
        terms, projections = prepare_inside([*HINTON, hidden], student, teacher)
        return student, terms, projections
    student = layer_subset(teacher, [0, 2])
    if kind == "lora":
        student = wrap_adapter(student, StudentConfig(adapter="lora", lora={"r": 4}))
    return student, HINTON, torch.nn.ModuleDict()


def _train_kind(kind: str, folder: Path) -> dict[str, torch.Tensor]:
    blocks, teacher, _ = _setup()
    student, terms, projections = _student(kind, teacher)
    train(
        student,
        blocks,
        CausalLM(terms, projections=projections),
        TrainConfig(
            steps=3,
            batch_size=4,
            warmup=1,
            lr=1e-2,
            grad_accum=2,
            freeze_embeddings=kind == "frozen",
            parallel="fsdp",
        ),
        teacher=LiveTeacher(teacher),
        name="student",
        checkpoint_dir=folder / "ckpt",
        metrics_path=folder / "metrics.jsonl",
        extra=projections or None,
    )
    weights = {f"student.{k}": v for k, v in student.state_dict().items()}
    weights |= {f"extra.{k}": v for k, v in projections.state_dict().items()}
    return {k: v.detach().clone().contiguous() for k, v in weights.items()}


def _kind_worker(rank: int, port: int, folder: str, kind: str) -> None:
    as_launched(rank, 2, port)
    weights = _train_kind(kind, Path(folder))
    save_file(weights, str(Path(folder) / f"rank{rank}.safetensors"))
    leave_spawned()


@pytest.mark.parametrize("kind", ["inside", "lora", "frozen"])
def test_fsdp_trains_like_one_process(tmp_path, kind):
    one = _train_kind(kind, tmp_path / "one")
    _launch(_kind_worker, tmp_path / "two", kind)
    ranks = [load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in range(2)]
    _assert_same(one, ranks[0])
    # every process gets the whole trained model back, the same on each
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    # and the parts that train did move: the projection, or the adapters (base frozen)
    _, teacher, _ = _setup()
    untrained, _, projections = _student(kind, teacher)
    start = {f"student.{k}": v for k, v in untrained.state_dict().items()}
    start |= {f"extra.{k}": v for k, v in projections.state_dict().items()}
    moved = {k for k in start if not torch.allclose(start[k], one[k], atol=ATOL)}
    if kind == "inside":
        assert any(k.startswith("extra.") for k in moved)
    elif kind == "lora":
        assert moved and all("lora_" in k for k in moved)
    else:
        assert moved and not {"student.model.embed_tokens.weight", "student.lm_head.weight"} & moved
