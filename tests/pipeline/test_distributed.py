"""`potstill teach` and `potstill distill` under torchrun, 2 CPU processes (gloo): the
cache holds what one process teaches, and the student equals one process's at the same
global batch. A killed rank's shards are taught again on rerun, the finished ones kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from potstill.cache.reader import TeacherCache
from potstill.cache.store import read_manifest
from potstill.data.batch import Batch
from potstill.signals import SignalRequest
from tests.conftest import free_port, run_cli, tiny_recipe

pytestmark = pytest.mark.slow

ATOL = 2e-5  # float32 summation order across processes (see tests/train/test_distributed.py)


@pytest.fixture
def recipe(tmp_path, tiny_teacher_dir, corpus_file) -> Path:
    values = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file, steps=4)
    values["train"] |= {"batch_size": 4, "grad_accum": 2, "checkpoint_every": 2}
    values["teach"] = {"top_k": 8, "samples": 0, "shard_blocks": 3, "batch_size": 2}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _launch(launcher: list[str], *args: str) -> subprocess.CompletedProcess:
    """``potstill ARGS`` in 2 CPU processes under ``launcher`` (a launcher's module and its
    flags, the port last); one thread each."""
    command = [sys.executable, "-m", *launcher, str(free_port()), "-m", "potstill", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    flags = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port"]
    return _launch(["torch.distributed.run", *flags], *args)


def _accelerate(*args: str) -> subprocess.CompletedProcess:
    flags = [
        "--multi_gpu",  # several processes: on a machine without GPUs, gloo on the CPU
        *("--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"),
    ]
    return _launch(["accelerate.commands.launch", *flags], *args)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "student" / "model.safetensors"))


def _cache(run: Path) -> TeacherCache:
    return TeacherCache.load(run / "cache", {})


def test_teach_and_distill_in_two_processes_equal_one(recipe, tmp_path, capsys):
    for verb in ("teach", "distill"):
        code, _, err = run_cli(verb, str(recipe), "name=one", capsys=capsys)
        assert code == 0, err
        done = _torchrun(verb, str(recipe), "name=two")
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"

    # The cache: every block once, shards from both ranks, the same signal per block.
    manifest = read_manifest(two / "cache")
    assert manifest.complete and {s.rank for s in manifest.shards} == {0, 1}
    assert not list((two / "cache").glob("journal-*"))
    a, b = _cache(one), _cache(two)
    every = torch.tensor(manifest.plan)
    sa, sb = a.signal(every), b.signal(every)
    assert torch.equal(sa.ids, sb.ids) and torch.equal(sa.logprobs, sb.logprobs)

    # The student: the same weights, within float32 summation order.
    wa, wb = _weights(one), _weights(two)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= ATOL, worst
    # Rank 0 alone wrote the metrics: one row per step.
    rows = [json.loads(r) for r in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["model"] == "student"] == [1, 2, 3, 4]


def test_compact_hidden_states_taught_in_two_processes_keep_a_basis_per_rank(recipe, tmp_path):
    values = yaml.safe_load(recipe.read_text())
    values["loss"].append({"loss": "hidden_mse", "weight": 1.0, "layers": "auto"})
    values["teach"]["hidden_error"] = 0.05
    recipe.write_text(yaml.safe_dump(values))
    done = _torchrun("teach", str(recipe), "name=two")
    assert done.returncode == 0, done.stderr[-3000:]
    cache = tmp_path / "runs" / "two" / "cache"
    manifest = read_manifest(cache)
    assert manifest.complete and {s.rank for s in manifest.shards} == {0, 1}
    bases = {s.rank: s.fields.hidden.basis.file for s in manifest.shards}
    assert bases == {0: "hidden-basis-r0.safetensors", 1: "hidden-basis-r1.safetensors"}
    assert all(s.fields.hidden.error is not None for s in manifest.shards)
    assert manifest.fields.hidden.error_mean is not None
    loaded = _cache(tmp_path / "runs" / "two")
    ids = torch.zeros(len(manifest.plan), 16, dtype=torch.long)  # only the index is read
    batch = Batch.of(ids, ids.clone(), torch.tensor(manifest.plan))
    layers = manifest.hidden_layers
    states = loaded.outputs(batch, SignalRequest(distributions=False, hidden_layers=layers))
    assert all(torch.isfinite(states.hidden_states[layer]).all() for layer in layers)


def test_distill_under_accelerate_launch_equals_one_process(recipe, tmp_path, capsys):
    for verb in ("teach", "distill"):
        code, _, err = run_cli(verb, str(recipe), "name=one", capsys=capsys)
        assert code == 0, err
    cache = tmp_path / "runs" / "one" / "cache"
    done = _accelerate("distill", str(recipe), "name=acc", f"teach.cache={cache}")
    assert done.returncode == 0, done.stderr[-3000:]
    wa, wb = _weights(tmp_path / "runs" / "one"), _weights(tmp_path / "runs" / "acc")
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= ATOL, worst


def test_distill_sharded_with_fsdp_equals_one_process(recipe, tmp_path, capsys):
    """train.parallel=fsdp: parameters, gradients and optimizer state in shards, and the
    student saved whole (gathered from them) as an ordinary HF folder."""
    for verb in ("teach", "distill"):
        code, _, err = run_cli(verb, str(recipe), "name=one", capsys=capsys)
        assert code == 0, err
    cache = tmp_path / "runs" / "one" / "cache"
    done = _torchrun(
        "distill", str(recipe), "name=fsdp", "train.parallel=fsdp", f"teach.cache={cache}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wa, wb = _weights(tmp_path / "runs" / "one"), _weights(tmp_path / "runs" / "fsdp")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= ATOL, worst
    # the same stage: a one-process rerun finds it done whatever the parallel mode
    stamp = (tmp_path / "runs" / "fsdp" / "student" / "model.safetensors").stat().st_mtime_ns
    code, _, err = run_cli(
        "distill", str(recipe), "name=fsdp", f"teach.cache={cache}", "--resume", capsys=capsys
    )
    assert code == 0, err
    assert (
        tmp_path / "runs" / "fsdp" / "student" / "model.safetensors"
    ).stat().st_mtime_ns == stamp


def test_sharded_training_killed_mid_run_resumes_to_the_same_weights(recipe, tmp_path, capsys):
    """SIGKILL to the whole torchrun job (launcher and both ranks) mid-training under FSDP;
    the rerun resumes from the last checkpoint and ends on the uninterrupted run's weights,
    bitwise: the checkpoint holds full tensors, re-sharded exactly on resume."""
    longer = ["train.steps=24", "train.checkpoint_every=2", "train.warmup=2"]
    code, _, err = run_cli("teach", str(recipe), "name=one", *longer, capsys=capsys)
    assert code == 0, err
    cache = tmp_path / "runs" / "one" / "cache"
    args = ["distill", str(recipe), f"teach.cache={cache}", "train.parallel=fsdp", *longer]
    done = _torchrun(*args, "name=straight")
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "runs" / "killed"
    flags = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port"]
    command = [sys.executable, "-m", "torch.distributed.run", *flags, str(free_port())]
    job = subprocess.Popen(
        [*command, "-m", "potstill", *args, "name=killed"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = killed / "metrics.jsonl"
    while job.poll() is None and not (metrics.is_file() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and not (killed / "student").exists()
    state = json.loads((killed / "checkpoints" / "student" / "state.json").read_text())
    assert 2 <= state["step"] < 24

    done = _torchrun(*args, "name=killed", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    wa, wb = _weights(tmp_path / "runs" / "straight"), _weights(killed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_killed_ranks_shards_are_taught_again(recipe, tmp_path, capsys):
    done = _torchrun("teach", str(recipe), "name=two")
    assert done.returncode == 0, done.stderr[-3000:]
    cache = tmp_path / "runs" / "two" / "cache"
    manifest = read_manifest(cache)
    # As if rank 1 died before the merge: its shards were never entered, its journal is
    # left, and one of its shard files was cut short by the kill.
    rank1 = [s for s in manifest.shards if s.rank == 1]
    kept = [s for s in manifest.shards if s.rank == 0]
    (cache / "journal-r1.json").write_text(json.dumps([s.model_dump(mode="json") for s in rank1]))
    broken = cache / rank1[0].fields.top_k.file
    broken.write_bytes(broken.read_bytes()[:10])
    data = json.loads((cache / "manifest.json").read_text())
    data["shards"] = [s for s in data["shards"] if s["rank"] == 0]
    (cache / "manifest.json").write_text(json.dumps(data))

    code, _, err = run_cli("teach", str(recipe), "name=two", capsys=capsys)
    assert code == 0, err
    after = read_manifest(cache)
    assert after.complete
    # rank 0's shards and rank 1's intact ones kept as they were; the cut one taught again
    files = {s.fields.top_k.file for s in after.shards}
    assert {s.fields.top_k.file for s in kept} <= files
    assert {s.fields.top_k.file for s in rank1[1:]} <= files
    assert "truncated" in err and not list(cache.glob("journal-*"))
    _cache(tmp_path / "runs" / "two")  # every shard verifies


def test_run_under_a_launcher_is_refused_in_one_line(recipe):
    done = _torchrun("run", str(recipe), "name=three")
    assert done.returncode != 0
    assert "error: potstill run is one process" in done.stderr
    # torchrun reports the failed children with its own traceback; none is potstill's
    assert "potstill/pipeline" not in done.stderr
