"""evaluate_models on the tiny teacher and a student: the entries the report is built from
hold the next-token ECE, the scores by training frequency band and the worst
disagreements as text, all plain JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from potstill.data import load_data
from potstill.data.settings import DataConfig
from potstill.evaluation.lm import CONTEXT_TOKENS, continuations, evaluate_models, sample_blocks
from potstill.evaluation.report import build_report
from potstill.evaluation.report.schema import json_ready
from potstill.models.load import load_causal_lm
from potstill.tasks.causal_lm.metrics import WORST
from tests.conftest import make_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_tokenizer, tiny_teacher_dir, corpus_file):
    """(refs, data): the tiny teacher, a 2-layer student of the same vocabulary, the corpus."""
    student_dir = tmp_path_factory.mktemp("student")
    make_llama(len(tiny_tokenizer), layers=2, seed=1).save_pretrained(student_dir)
    tiny_tokenizer.save_pretrained(student_dir)
    data = load_data(DataConfig(path=str(corpus_file), block_size=16, heldout=0.1), tiny_tokenizer)
    return {"teacher": str(tiny_teacher_dir), "student": str(student_dir)}, data


def evaluate(refs, data, **kwargs):
    return evaluate_models(
        refs, data, teacher_key="teacher", batch_size=4, generate_tokens=2, **kwargs
    )


def test_entries_hold_calibration_bands_and_worst_disagreements(setting, tiny_tokenizer):
    refs, data = setting
    results = evaluate(refs, data, tokenizer=tiny_tokenizer)
    teacher, student = results["teacher"], results["student"]
    for entry in (teacher, student):
        assert 0.0 <= entry["ece"] <= 1.0
        bands = entry["frequency_bands"]
        assert [b["band"] for b in bands] == [
            "1–100",
            "101–1,000",
            "1,001–10,000",
            ">10,000 or unseen",
        ]
        assert sum(b["share"] for b in bands) == pytest.approx(1.0)
        assert sum(b["tokens"] for b in bands) == data.heldout.num_tokens - len(data.heldout)
    assert all(b["top1"] is None for b in teacher["frequency_bands"])
    assert "worst_disagreements" not in teacher
    # A 300-token vocabulary: no seen token ranks past 1,000.
    assert student["frequency_bands"][2]["tokens"] == 0
    first = student["frequency_bands"][0]
    assert first["tokens"] > 0 and 0.0 <= first["top1"] <= 1.0 and first["loss"] > 0

    worst = student["worst_disagreements"]
    assert len(worst) == WORST
    assert [w["kl"] for w in worst] == sorted((w["kl"] for w in worst), reverse=True)
    assert worst[0]["kl"] > 0
    for w in worst:
        assert all(isinstance(w[key], str) for key in ("context", "target", "teacher_top"))
        assert isinstance(w["model_top"], str) and w["context"]
        assert len(tiny_tokenizer(w["context"])["input_ids"]) <= CONTEXT_TOKENS + 2

    # The stage caches the entries in a JSON marker, and the report validates them.
    plain = json.loads(json.dumps(json_ready(results), allow_nan=False))
    report = build_report(kind="lm", run={}, data={}, recipe={}, models=plain)
    assert report.models["student"].worst_disagreements[0].kl == pytest.approx(worst[0]["kl"])
    assert report.models["student"].ece == pytest.approx(student["ece"])


def test_without_a_tokenizer_or_a_teacher(setting):
    refs, data = setting
    results = evaluate(refs, data)
    assert "worst_disagreements" not in results["student"]
    assert "frequency_bands" in results["student"]
    alone = evaluate_models(
        {"student": refs["student"]}, data, teacher_key=None, batch_size=4, generate_tokens=2
    )["student"]
    assert math.isfinite(alone["ece"])
    assert all(b["top1"] is None for b in alone["frequency_bands"])


def test_continuations_are_each_models_greedy_text_after_the_same_prompts(setting, tiny_tokenizer):
    refs, data = setting
    models = {name: load_causal_lm(ref)[0] for name, ref in refs.items()}
    models["student"].train()  # handed back in the mode it had
    samples = continuations(models, data.heldout, tiny_tokenizer, new_tokens=5, prompt_tokens=6)
    assert models["student"].training and not models["teacher"].training
    last = len(data.heldout) - 1
    assert len(samples) == 3 and sample_blocks(len(data.heldout)) == [0, last // 2, last]
    for sample, block in zip(samples, [0, last // 2, last], strict=True):
        prompt = data.heldout.input_ids[block, :6]
        assert sample["prompt"] == tiny_tokenizer.decode(prompt.tolist())
        for name, model in models.items():
            # the reference: argmax after argmax on the whole sequence, no cache (the tiny
            # models' end-of-text id 0 is not among the tokens they write here)
            ids = prompt.tolist()
            with torch.no_grad():
                for _ in range(5):
                    ids.append(
                        int(model.eval()(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                    )
            assert 0 not in ids[6:]
            assert sample["continuations"][name] == tiny_tokenizer.decode(ids[6:]), name
