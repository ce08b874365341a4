"""`potstill run` with a `context`: the teacher reads a system prompt, a LoRA student on the
same model does not, and learns to answer as the prompted teacher does."""

from __future__ import annotations

import json
from pathlib import Path

from potstill.evaluation.report import Report
from tests.conftest import run_cli
from tests.test_cli_label import chat_teacher_dir  # noqa: F401 (a fixture)

PAIRS = [
    ("to be?", "or not to be, that is the question."),
    ("who is there?", "nay, answer me: stand, and unfold yourself."),
    ("what news?", "the king doth wake tonight and takes his rouse."),
    ("where is the king?", "in his chamber, my lord, with the queen."),
    ("how now?", "the air bites shrewdly; it is very cold."),
    ("what hour?", "i think it lacks of twelve."),
] * 2


def _recipe(tmp_path: Path, teacher: Path, steps: int = 8) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    path = tmp_path / "context.yaml"
    path.write_text(
        f"""
name: tiny-context
runs_dir: {tmp_path / "runs"}
teacher: {teacher}
device: cpu
task: {{kind: context}}
context:
  system: answer as the ghost of hamlet's father, in old words.
  examples: [{{prompt: "who art thou?", response: "i am thy father's spirit."}}]
student: {{adapter: lora, lora: {{r: 4, alpha: 8, lr: 1.0e-2}}}}
data: {{path: {data}, heldout: 0.25, block_size: 256}}
loss: [{{loss: forward_kl, weight: 1.0}}]
train: {{steps: {steps}, batch_size: 4, warmup: 1, threads: 1}}
"""
    )
    return path


def test_the_adapter_moves_the_unprompted_model_toward_the_prompted_teacher(
    tmp_path,
    capsys,
    chat_teacher_dir,  # noqa: F811
):
    code, _out, err = run_cli("run", str(_recipe(tmp_path, chat_teacher_dir)), capsys=capsys)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-context"
    report = Report.load(run_dir / "report.json")
    assert set(report.models) == {"teacher", "base", "student"}
    base, student = report.models["base"].agreement, report.models["student"].agreement
    assert student.kl < base.kl  # trained toward the prompted teacher
    assert report.models["student"].trainable_params < report.models["student"].params / 4
    assert report.recipe["context_tokens_per_call"] > 10
    assert report.recipe["prefill_ms_with_context"] > 0
    markdown = (run_dir / "report.md").read_text()
    assert "**agreement with the prompted teacher:" in markdown and "gap closed" not in markdown
    adapter = run_dir / "student" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    # A rerun with --resume trains nothing again.
    code, _out, err = run_cli("run", str(tmp_path / "context.yaml"), "--resume", capsys=capsys)
    assert code == 0 and "student: already trained, skipping" in err


def test_text_rows_are_refused_with_one_line(tmp_path, capsys, chat_teacher_dir):  # noqa: F811
    path = _recipe(tmp_path, chat_teacher_dir)
    (tmp_path / "pairs.jsonl").write_text('{"text": "plain prose"}\n{"text": "more"}\n')
    code, _out, err = run_cli("run", str(path), capsys=capsys)
    assert code == 2 and "holds text, not prompt/response rows" in err.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "tiny-context").exists()
