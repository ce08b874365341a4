import pytest
import torch
from transformers import AutoModelForCausalLM

from potstill.config import FreshConfig, StudentConfig
from potstill.models.student import (
    build_student,
    check_same_vocab,
    fresh_student,
    layer_subset,
    save_student,
    wrap_adapter,
)
from potstill.util.errors import PotstillError
from tests.conftest import llama_folder, make_llama, make_tokenizer


@pytest.fixture
def teacher(tiny_tokenizer):
    return make_llama(len(tiny_tokenizer), layers=4).eval()


def test_layer_subset_copies_the_chosen_layers(teacher):
    student = layer_subset(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    assert len(student.model.layers) == 2
    for new, old in [(0, 0), (1, 3)]:
        for (name, a), (_, b) in zip(
            student.model.layers[new].named_parameters(),
            teacher.model.layers[old].named_parameters(),
            strict=True,
        ):
            assert torch.equal(a, b), name
            assert a.data_ptr() != b.data_ptr(), f"{name} shares storage with the teacher"
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    assert len(teacher.model.layers) == 4


def test_keeping_every_layer_reproduces_the_teacher(teacher):
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    student = layer_subset(teacher, [0, 1, 2, 3]).eval()
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits)


def test_subset_generates_with_a_kv_cache(teacher):
    student = layer_subset(teacher, [1, 2]).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 5))
    cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(("layers", "match"), [([0, 9], "out of range"), ([2, 1], "increasing")])
def test_bad_layer_lists(teacher, layers, match):
    with pytest.raises(PotstillError, match=match):
        layer_subset(teacher, layers)


def test_fresh_student_has_the_asked_shape(teacher):
    fresh = FreshConfig(num_layers=2, hidden_size=16, num_heads=2)
    student = fresh_student(teacher, fresh)
    assert student.config.num_hidden_layers == 2
    assert student.get_input_embeddings().weight.shape == (teacher.config.vocab_size, 16)
    with pytest.raises(PotstillError, match="divisible"):
        fresh_student(teacher, FreshConfig(hidden_size=18, num_heads=4))


def test_vocab_mismatch_is_refused_with_the_fix(tiny_tokenizer):
    other = make_tokenizer(vocab_size=280)
    with pytest.raises(PotstillError, match=r"vocabularies differ.*from_teacher"):
        check_same_vocab(tiny_tokenizer, other)


def test_student_from_a_folder_with_another_vocab(tmp_path, teacher, tiny_tokenizer):
    other_tok = make_tokenizer(vocab_size=280)
    make_llama(len(other_tok), layers=1).save_pretrained(tmp_path)
    other_tok.save_pretrained(tmp_path)
    with pytest.raises(PotstillError, match="vocabularies differ"):
        build_student(StudentConfig(model=str(tmp_path)), teacher, tiny_tokenizer)


@pytest.mark.parametrize("adapter", ["lora", "pissa"])
def test_adapters_train_only_adapter_weights(teacher, adapter):
    cfg = StudentConfig(adapter=adapter, lora={"r": 4, "alpha": 8})
    model = wrap_adapter(layer_subset(teacher, [0, 1]), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_pissa_starts_from_the_base_model(teacher):
    base = layer_subset(teacher, [0, 1]).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 8))
    expected = base(ids).logits
    model = wrap_adapter(base, StudentConfig(adapter="pissa", lora={"r": 4, "alpha": 4})).eval()
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_saved_adapter_student_loads_as_a_plain_model(tmp_path, teacher, tiny_tokenizer):
    model = wrap_adapter(layer_subset(teacher, [0, 2]), StudentConfig(adapter="lora"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # make the adapters matter
    model.eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 8))
    save_student(model, tiny_tokenizer, tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    assert (tmp_path / "student" / "adapter" / "adapter_config.json").is_file()


def test_student_layers_cut_a_student_model(tmp_path, tiny_tokenizer, teacher):
    folder = llama_folder(tmp_path / "other", tiny_tokenizer, layers=4)
    whole = AutoModelForCausalLM.from_pretrained(folder)
    cut, tokenizer = build_student(
        StudentConfig(model=str(folder), layers=[0, 3]), teacher, tiny_tokenizer
    )
    assert cut.config.num_hidden_layers == 2 and len(tokenizer) == len(tiny_tokenizer)
    for new, old in [(0, 0), (1, 3)]:
        for a, b in zip(
            cut.model.layers[new].parameters(), whole.model.layers[old].parameters(), strict=True
        ):
            assert torch.equal(a, b)
    with pytest.raises(PotstillError, match=r"student.layers: \[7\] out of range"):
        build_student(StudentConfig(model=str(folder), layers=[7]), teacher, tiny_tokenizer)
    with pytest.raises(ValueError, match=r"student\.layers cuts a student\.model"):
        StudentConfig(layers=[0])
