"""A student of another tokenizer than the teacher's: taken for terms that need no shared
ids (`uld`, `cross_entropy`), refused in one line naming `uld` for the others."""

from __future__ import annotations

import pytest

from potstill.models.settings import StudentConfig
from potstill.models.student import build_student, check_same_vocab, same_tokenizer
from potstill.util.errors import PotstillError
from tests.conftest import llama_folder, make_llama, make_tokenizer


@pytest.fixture(scope="module")
def tokenizers():
    return make_tokenizer(300), make_tokenizer(120)


def test_terms_that_need_no_shared_ids_take_another_tokenizer(tokenizers):
    teacher, student = tokenizers
    assert not same_tokenizer(teacher, student)
    check_same_vocab(teacher, student, loss_names=["uld", "cross_entropy"])
    check_same_vocab(teacher, student, loss_names=["cross_entropy"])


@pytest.mark.parametrize("names", [["forward_kl", "cross_entropy"], ["uld", "hidden_mse"], None])
def test_terms_that_compare_ids_are_refused_naming_the_cross_tokenizer_loss(tokenizers, names):
    teacher, student = tokenizers
    with pytest.raises(PotstillError, match="vocabularies differ") as refused:
        check_same_vocab(teacher, student, loss_names=names)
    message = str(refused.value)
    assert "{loss: uld}" in message and "\n" not in message
    if names is not None:
        assert next(n for n in names if n not in ("uld", "cross_entropy")) in message


def test_build_student_loads_a_student_of_another_tokenizer_for_uld(tokenizers, tmp_path):
    teacher_tokenizer, student_tokenizer = tokenizers
    folder = llama_folder(tmp_path / "student", student_tokenizer, layers=1)
    teacher = make_llama(len(teacher_tokenizer), layers=1)
    cfg = StudentConfig(model=str(folder))
    student, tokenizer = build_student(
        cfg, teacher, teacher_tokenizer, loss_names=["uld", "cross_entropy"]
    )
    assert student.get_output_embeddings().weight.shape[0] == len(student_tokenizer)
    assert same_tokenizer(tokenizer, student_tokenizer)
    with pytest.raises(PotstillError, match="forward_kl"):
        build_student(cfg, teacher, teacher_tokenizer, loss_names=["forward_kl"])
