"""Loading causal LMs: a vocabulary padded past the tokenizer's ids is trimmed, so two
models of one tokenizer compare id by id whatever padding each checkpoint had."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import potstill
from potstill.models.load import load_causal_lm, tokenizer_ids
from tests.conftest import make_llama, tiny_recipe

PADDING = 20


def padded_folder(folder: Path, tokenizer, layers: int = 4, seed: int = 0) -> Path:
    """``make_llama`` of ``tokenizer``'s ids with PADDING extra rows of large random values
    (what a checkpoint padded to a round size holds past the tokenizer), and the tokenizer."""
    ids = tokenizer_ids(tokenizer)
    plain = make_llama(ids, layers=layers, seed=seed)
    padded = make_llama(ids + PADDING, layers=layers, seed=seed)
    state = plain.state_dict()
    rows = torch.randn(
        PADDING, plain.config.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    state["model.embed_tokens.weight"] = torch.cat([state["model.embed_tokens.weight"], 5 * rows])
    state.pop("lm_head.weight")  # tied to the embedding
    padded.load_state_dict(state, strict=False)
    assert padded.lm_head.weight.data_ptr() == padded.model.embed_tokens.weight.data_ptr()
    padded.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_padding_rows_are_dropped_and_every_logit_kept(tmp_path, tiny_tokenizer):
    ids = tokenizer_ids(tiny_tokenizer)
    plain = make_llama(ids)
    folder = padded_folder(tmp_path / "padded", tiny_tokenizer)
    logs: list[str] = []
    model, _ = load_causal_lm(str(folder), log=logs.append)

    assert model.get_output_embeddings().weight.shape[0] == ids == model.config.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == ids
    assert f"dropped {PADDING} padding rows past the tokenizer's {ids:,} token ids" in logs
    sample = torch.randint(0, ids, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(sample).logits, plain.eval()(sample).logits)
    # A model with no padding loads as it is, and says nothing.
    logs.clear()
    plain.save_pretrained(tmp_path / "plain")
    tiny_tokenizer.save_pretrained(tmp_path / "plain")
    unpadded, _ = load_causal_lm(str(tmp_path / "plain"), log=logs.append)
    assert unpadded.get_output_embeddings().weight.shape[0] == ids and not logs


@pytest.mark.usefixtures("one_thread")
def test_a_padded_teacher_teaches_what_the_unpadded_one_does(
    tmp_path, tiny_tokenizer, tiny_teacher_dir, corpus_file
):
    padded = padded_folder(tmp_path / "padded-teacher", tiny_tokenizer)
    students = {}
    for name, teacher in (("plain", tiny_teacher_dir), ("padded", padded)):
        recipe = tiny_recipe(tmp_path / name, teacher, corpus_file)
        students[name] = load_file(potstill.distill(recipe) / "model.safetensors")
    assert students["plain"].keys() == students["padded"].keys()
    for key, weight in students["plain"].items():
        assert torch.equal(weight, students["padded"][key]), key


@pytest.mark.usefixtures("one_thread")
def test_a_padded_student_learns_from_an_unpadded_teacher(
    tmp_path, tiny_tokenizer, tiny_teacher_dir, corpus_file
):
    # Before, "teacher and student output sizes differ (300 vs 320 logits)" refused it.
    student = padded_folder(tmp_path / "padded-student", tiny_tokenizer, layers=2, seed=3)
    recipe = tiny_recipe(tmp_path / "runs", tiny_teacher_dir, corpus_file)
    recipe["student"] = {"model": str(student)}
    saved = load_file(potstill.distill(recipe) / "model.safetensors")
    assert saved["model.embed_tokens.weight"].shape[0] == tokenizer_ids(tiny_tokenizer)
