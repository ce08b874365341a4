"""Sequence-level distillation on tiny models, by the commands docs/tasks/lm.md gives:
`generate` writes the teacher's answers, `run` trains on them as chats (prompt masked):
the baseline from the answers alone, the student from the teacher's distributions too."""

from __future__ import annotations

from pathlib import Path

from potstill.data import load_data
from potstill.data.settings import DataConfig
from potstill.evaluation.report import Report
from potstill.models.load import load_causal_lm
from potstill.util.tokens import IGNORE_INDEX
from tests.conftest import run_cli
from tests.pipeline.test_generate import chat_teacher  # noqa: F401 (a fixture)

PROMPTS = [f"line {i}: to be, or not to be" for i in range(12)]


def _recipe(tmp_path: Path, teacher: Path) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    generations = tmp_path / "runs" / "tiny-sequence" / "generations.jsonl"
    path = tmp_path / "sequence.yaml"
    path.write_text(
        f"""
name: tiny-sequence
runs_dir: {tmp_path / "runs"}
teacher: {teacher}
device: cpu
generate: {{prompts: {prompts}, max_tokens: 12, temperature: 0, batch_size: 4}}
data: {{path: {generations}, chat_template: true, heldout: 0.25, block_size: 32}}
student: {{from_teacher: {{layers: [0]}}}}
loss:
  - {{loss: forward_kl, weight: 0.5}}
  - {{loss: cross_entropy, weight: 0.5}}
train: {{steps: 3, batch_size: 2, warmup: 1, threads: 1}}
eval: {{generate_tokens: 4}}
"""
    )
    return path


def test_generate_then_run_trains_on_the_answers_as_chats(
    tmp_path,
    capsys,
    chat_teacher,  # noqa: F811
):
    recipe = _recipe(tmp_path, chat_teacher)
    code, _out, err = run_cli("generate", str(recipe), capsys=capsys)
    assert code == 0, err
    code, _out, err = run_cli("run", str(recipe), capsys=capsys)
    assert code == 0, err
    report = Report.load(tmp_path / "runs" / "tiny-sequence" / "report.json")
    assert set(report.models) == {"teacher", "student", "baseline"}
    for entry in report.models.values():
        assert entry.perplexity is not None and entry.perplexity > 1
    # What the students trained on: each chat's prompt masked, the answers labelled.
    _, tokenizer = load_causal_lm(str(chat_teacher))
    data = load_data(
        DataConfig(
            path=str(tmp_path / "runs" / "tiny-sequence" / "generations.jsonl"),
            chat_template=True,
            heldout=0.25,
            block_size=32,
        ),
        tokenizer,
    )
    labels = data.train.labels
    assert (labels == IGNORE_INDEX).any() and (labels != IGNORE_INDEX).any()
    stream = tokenizer.decode(data.train.input_ids.flatten().tolist())
    assert "<eos>user\n" in stream and "<eos>assistant\n" in stream


def test_text_rows_cannot_be_rendered_as_chats(tmp_path, capsys, chat_teacher):  # noqa: F811
    recipe = _recipe(tmp_path, chat_teacher)
    texts = tmp_path / "texts.txt"
    texts.write_text("plain prose\nmore prose\n")
    code, _out, err = run_cli("run", str(recipe), f"data.path={texts}", capsys=capsys)
    assert code == 2
    assert "data.chat_template is true but the data holds plain text" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_run_alone_generates_first_and_a_rerun_reuses_the_rows(
    tmp_path,
    capsys,
    chat_teacher,  # noqa: F811
):
    recipe = _recipe(tmp_path, chat_teacher)
    code, _out, err = run_cli("run", str(recipe), capsys=capsys)
    assert code == 0, err
    folder = tmp_path / "runs" / "tiny-sequence"
    assert len((folder / "generations.jsonl").read_text().splitlines()) == len(PROMPTS)
    assert Report.load(folder / "report.json").models["student"].perplexity is not None
    code, _out, err = run_cli("run", str(recipe), capsys=capsys)
    assert code == 2 and "already exists; pass --resume" in err  # refused, nothing redone
    code, out, err = run_cli("run", str(recipe), "--resume", capsys=capsys)
    assert code == 0, err
    assert f"generations: 0 rows written, {len(PROMPTS)} kept" in out + err
    assert len((folder / "generations.jsonl").read_text().splitlines()) == len(PROMPTS)
