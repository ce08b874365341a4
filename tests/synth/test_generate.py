"""Generation rows on a tiny local teacher: deduplication, per-row seeds, a run stopped
midway and finished by a rerun giving the very rows an uninterrupted run gives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from potstill.data.texts import TextSet
from potstill.generation import Engine
from potstill.synth.generate import (
    Todo,
    Written,
    distinct_prompts,
    generation_settings,
    plan_rows,
    row_seed,
    write_rows,
)
from potstill.synth.generations import GenerationsStore, read_generations
from potstill.synth.settings import GenerateConfig
from potstill.synth.writers import LocalWriter
from potstill.util.errors import PotstillError
from tests.conftest import make_tokenizer
from tests.serve.conftest import make_decisive_llama
from tests.synth.test_label import CHAT_TEMPLATE

TEXTS = ["To be", "or not", "To be", "the question", "To sleep", "No more"]
CFG = GenerateConfig(prompts="x", n=2, max_tokens=6, temperature=1.0, shard_rows=3)


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return make_decisive_llama(len(tokenizer)).eval(), tokenizer


def texts(items: list[str] = TEXTS) -> TextSet:
    return TextSet("prompts", list(range(len(items))), items)


class StopsAfter:
    """A writer that lets ``rows`` rows through, then raises as Ctrl-C would."""

    def __init__(self, inner: LocalWriter, rows: int) -> None:
        self.inner, self.rows = inner, rows

    def write(self, rows: Sequence[Todo], done: Callable[[Todo, Written], None]) -> None:
        count = 0

        def counted(row: Todo, written: Written) -> None:
            nonlocal count
            if count == self.rows:
                raise KeyboardInterrupt
            count += 1
            done(row, written)

        self.inner.write(rows, counted)

    def usage(self) -> dict[str, int]:
        return self.inner.usage()


def run(lm, folder, cfg: GenerateConfig = CFG, *, stop_after: int | None = None):
    prompts, duplicates = distinct_prompts(texts(), cfg.system)
    store = GenerationsStore(folder)
    with Engine(*lm, max_batch=cfg.batch_size) as engine:
        local = LocalWriter(engine, cfg, chunk_rows=4)
        settings = generation_settings(
            cfg, teacher="tiny", teacher_sha256="abc", prompt_format=local.prompt_format
        )
        store.check(settings)
        plan = plan_rows(store, prompts, cfg.n, cfg.seed)
        local.prepare([row.prompt for row in plan.todo])  # as the stage does: refusals first
        writer = local if stop_after is None else StopsAfter(local, stop_after)
        return write_rows(
            plan, writer, store, settings, shard_rows=cfg.shard_rows, duplicates=duplicates
        )


def test_identical_prompts_are_generated_once_per_sample():
    prompts, duplicates = distinct_prompts(texts(), system=None)
    assert duplicates == 1
    assert [p.prompt_id for p in prompts] == [0, 1, 3, 4, 5]  # "To be" again at row 2
    assert prompts[0].messages == [{"role": "user", "content": "To be"}]
    with_system, _ = distinct_prompts(texts(), system="Be brief.")
    assert with_system[0].sha256 != prompts[0].sha256
    assert row_seed(0, prompts[0].sha256, 1) == row_seed(0, prompts[0].sha256, 1)
    assert row_seed(1, prompts[0].sha256, 1) != row_seed(0, prompts[0].sha256, 1)


def test_rows_hold_the_teachers_text_and_counts(lm, tmp_path, one_thread):
    result = run(lm, tmp_path)
    rows = read_generations(result.path)
    assert (result.rows, result.generated, result.kept, result.duplicates) == (10, 10, 0, 1)
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [
        (i, s) for i in (0, 1, 3, 4, 5) for s in (0, 1)
    ]
    _, tokenizer = lm
    for r in rows:
        assert r["completion_tokens"] <= 6 and r["finish_reason"] in ("stop", "length")
        text = tokenizer.apply_chat_template(
            r["messages"], tokenize=False, add_generation_prompt=True
        )
        assert r["prompt_tokens"] == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert r["teacher"] == "tiny" and r["teacher_sha256"] == "abc"
    assert rows[0]["response"] != rows[1]["response"]  # two samples, two seeds
    assert result.usage["completion_tokens"] == sum(r["completion_tokens"] for r in rows)


def test_a_stopped_run_resumes_to_the_rows_of_an_uninterrupted_one(lm, tmp_path, one_thread):
    whole = read_generations(run(lm, tmp_path / "whole").path)
    with pytest.raises(KeyboardInterrupt):
        run(lm, tmp_path / "stopped", stop_after=4)
    store = GenerationsStore(tmp_path / "stopped")
    assert not store.path.exists()
    assert len(store.done()) == 4  # a shard of 3, and the 1 finished before the stop
    result = run(lm, tmp_path / "stopped")
    assert (result.generated, result.kept) == (6, 4)
    assert read_generations(result.path) == whole  # sampled at T=1, yet the same rows
    again = run(lm, tmp_path / "stopped")
    assert (again.generated, again.kept) == (0, 10)


def test_a_larger_n_adds_samples_and_keeps_the_rest(lm, tmp_path, one_thread):
    first = read_generations(run(lm, tmp_path).path)
    more = run(lm, tmp_path, CFG.model_copy(update={"n": 3}))
    assert (more.generated, more.kept) == (5, 10)
    rows = read_generations(more.path)
    assert [r for r in rows if r["sample"] < 2] == first


def test_prompts_too_long_for_the_teacher_are_refused_before_writing(lm, tmp_path):
    cfg = CFG.model_copy(update={"max_tokens": 250})  # the tiny model's context is 256
    with pytest.raises(PotstillError, match="passes the teacher's 256-token context"):
        run(lm, tmp_path, cfg)
    assert not any(tmp_path.iterdir())
