import copy
import json

import pytest
import torch
from safetensors import safe_open
from torchao.quantization import IntxUnpackedToInt8Tensor
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear
from transformers import LlamaConfig, LlamaForCausalLM

from potstill.models.quantize import (
    SPEC_FILE,
    WEIGHTS_FILE,
    QuantizationSpec,
    convert_qat,
    is_quantized,
    load_quantized,
    pack_int4,
    prepare_qat,
    quantize_model,
    save_quantized,
    unpack_int4,
)
from potstill.util.errors import PotstillError
from tests.conftest import make_llama

pytestmark = pytest.mark.usefixtures("one_thread")

# Every layout; group 16 divides the tiny model's widths (32 and 64).
SPECS = [
    QuantizationSpec("int8"),
    QuantizationSpec("int4", group_size=16),
    QuantizationSpec("int8", "int8"),
    QuantizationSpec("int4", "int8", group_size=16),
]
SPEC_IDS = ["int8", "int4-g16", "int8-act8", "int4-g16-act8"]
# QAT also learns scales (range learning); PTQ has nothing to learn them from.
QAT_SPECS = [
    *SPECS,
    QuantizationSpec("int4", group_size=16, learn_scales=True),
    QuantizationSpec("int8", "int8", learn_scales=True),
]
QAT_IDS = [*SPEC_IDS, "int4-g16-learned", "int8-act8-learned"]

# Relative logit error ||quantized - float|| / ||float|| on the tiny model, seed 0. Measured:
# int8 0.008-0.009, int4 (groups of 16) 0.13.
MAX_RELATIVE_ERROR = {"int8": 0.02, "int4": 0.25}


@pytest.fixture
def model(tiny_tokenizer):
    return make_llama(len(tiny_tokenizer), layers=2).eval()


@pytest.fixture
def ids(tiny_tokenizer):
    return torch.randint(
        0, len(tiny_tokenizer), (2, 12), generator=torch.Generator().manual_seed(1)
    )


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


def relative_error(quantized, reference):
    return ((quantized - reference).norm() / reference.norm()).item()


def quantized_layers(model):
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
    }


# --- int4 packing -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16,), (15,), (1,), (3, 5), (4, 32), (2, 3, 7)])
def test_pack_unpack_round_trips_exactly(shape):
    values = torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(0))
    values = values.to(torch.int8)
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8
    assert packed.shape == ((values.numel() + 1) // 2,)
    assert torch.equal(unpack_int4(packed, shape), values)


def test_pack_covers_every_int4_value_in_both_nibbles():
    values = torch.arange(-8, 8, dtype=torch.int8)
    for pair in (values, values.flip(0)):
        assert torch.equal(unpack_int4(pack_int4(pair), (16,)), pair)
    # low nibble first, 4-bit two's complement: (-8, 7) -> 0x8 | 0x7 << 4
    assert pack_int4(torch.tensor([-8, 7], dtype=torch.int8)).tolist() == [0x78]


def test_pack_refuses_values_outside_int4():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([8], dtype=torch.int8))
    with pytest.raises(ValueError, match="int8"):
        pack_int4(torch.tensor([1], dtype=torch.int32))


def test_unpack_refuses_a_wrong_byte_count():
    with pytest.raises(ValueError, match="needs 3 uint8 bytes"):
        unpack_int4(torch.zeros(2, dtype=torch.uint8), (5,))


# --- post-training quantization, saved and reloaded --------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_quantize_save_load_round_trip(model, ids, tiny_tokenizer, tmp_path, spec):
    reference = logits(model, ids)
    quantized = quantize_model(copy.deepcopy(model), spec)
    expected = logits(quantized, ids)
    for name, weight in quantized_layers(quantized).items():
        assert isinstance(weight, IntxUnpackedToInt8Tensor), name
    assert quantized.lm_head.weight is quantized.model.embed_tokens.weight

    folder = tmp_path / "quantized"
    save_quantized(quantized, tiny_tokenizer, folder, spec)
    weight_files = [p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth"}]
    assert weight_files == [], "weights must be safetensors only"
    assert (folder / WEIGHTS_FILE).is_file() and (folder / "config.json").is_file()
    record = json.loads((folder / SPEC_FILE).read_text())
    assert record["spec"] == {
        "weights": spec.weights,
        "activations": spec.activations,
        "group_size": spec.group_size,
        "learn_scales": False,
    }
    assert record["format_version"] == 1 and record["torchao_version"]
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
        qdata = f.get_tensor("model.layers.0.mlp.down_proj._weight_qdata")
    assert not any(key.startswith("lm_head.") for key in keys), "a tied head is stored once"
    assert qdata.dtype == (torch.uint8 if spec.weights == "int4" else torch.int8)
    assert is_quantized(folder)

    reloaded, tokenizer = load_quantized(folder)
    assert torch.equal(logits(reloaded, ids), expected)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    assert relative_error(expected, reference) < MAX_RELATIVE_ERROR[spec.weights]


def test_int4_errs_more_than_int8(model, ids):
    reference = logits(model, ids)
    errors = {
        weights: relative_error(
            logits(quantize_model(copy.deepcopy(model), QuantizationSpec(weights)), ids),
            reference,
        )
        for weights in ("int8", "int4")
    }
    assert 0 < errors["int8"] < errors["int4"]


def test_an_untied_head_is_saved_and_reloaded(ids, tiny_tokenizer, tmp_path):
    model = _llama(len(tiny_tokenizer), hidden=32, layers=1, tied=False)
    spec = QuantizationSpec("int4", "int8", group_size=16)
    quantized = quantize_model(model, spec)
    assert quantized.lm_head.weight is not quantized.model.embed_tokens.weight
    assert quantized.lm_head.weight.activation_quantization is None  # the head: weight-only
    save_quantized(quantized, tiny_tokenizer, tmp_path / "q", spec)
    reloaded, _ = load_quantized(tmp_path / "q")
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    assert torch.equal(logits(reloaded, ids), logits(quantized, ids))


@pytest.mark.parametrize("group_size", [32, 16])
def test_int4_file_is_at_most_a_fifth_of_float32(tiny_tokenizer, tmp_path, group_size):
    # Big enough that the header (~7 kB of torchao metadata) does not dominate.
    model = _llama(2048, hidden=128, layers=2, tied=True)
    model.save_pretrained(tmp_path / "fp32")
    spec = QuantizationSpec("int4", group_size=group_size)
    save_quantized(quantize_model(model, spec), tiny_tokenizer, tmp_path / "int4", spec)
    ratio = (tmp_path / "int4" / WEIGHTS_FILE).stat().st_size / (
        tmp_path / "fp32" / WEIGHTS_FILE
    ).stat().st_size
    # Measured: 0.162 (groups of 32), 0.194 (groups of 16).
    assert ratio <= 0.2


# --- quantization-aware training ---------------------------------------------------------


@pytest.mark.parametrize("spec", QAT_SPECS, ids=QAT_IDS)
def test_qat_prepare_train_convert(model, ids, tiny_tokenizer, tmp_path, spec):
    reference = logits(model, ids)
    ptq_spec = spec.model_copy(update={"learn_scales": False})
    ptq = logits(quantize_model(copy.deepcopy(model), ptq_spec), ids)

    student = prepare_qat(copy.deepcopy(model), spec)
    assert isinstance(student.model.layers[0].self_attn.q_proj, FakeQuantizedLinear)
    assert isinstance(student.lm_head, FakeQuantizedLinear)
    assert isinstance(student.model.embed_tokens, FakeQuantizedEmbedding)
    assert student.lm_head.weight is student.model.embed_tokens.weight
    fake = logits(student, ids)
    assert not torch.equal(fake, reference)
    assert torch.equal(fake, ptq)  # before training, fake quantization is PTQ's rounding

    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    student.train()
    for _ in range(3):
        loss = student(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    student.eval()
    trainable = [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.down_proj.weight",
        *(
            [
                "model.embed_tokens.weight_fake_quantizer.scale",
                "model.layers.0.mlp.down_proj.weight_fake_quantizer.scale",
            ]
            if spec.learn_scales
            else []
        ),
    ]
    for name in trainable:
        assert not torch.equal(dict(student.named_parameters())[name], before[name]), name
    if spec.learn_scales:  # the tied head rounds with its embedding's scales
        assert (
            student.lm_head.weight_fake_quantizer
            is student.model.embed_tokens.weight_fake_quantizer
        )
    trained = logits(student, ids)

    convert_qat(student, spec)
    fake_modules = [
        name
        for name, module in student.named_modules()
        if isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding))
    ]
    assert fake_modules == []
    for name, weight in quantized_layers(student).items():
        assert isinstance(weight, IntxUnpackedToInt8Tensor), name
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert torch.equal(logits(student, ids), trained)  # atol 0: convert is fake quant, exactly

    save_quantized(student, tiny_tokenizer, tmp_path / "qat", spec)
    reloaded, _ = load_quantized(tmp_path / "qat")
    assert torch.equal(logits(reloaded, ids), trained)


@pytest.mark.parametrize("seed", range(5))
def test_convert_equals_fake_quantization_across_seeds(tiny_tokenizer, seed):
    spec = QuantizationSpec("int4", "int8", group_size=16)
    student = prepare_qat(make_llama(len(tiny_tokenizer), layers=2, seed=seed).eval(), spec)
    ids = torch.randint(
        0, len(tiny_tokenizer), (3, 9), generator=torch.Generator().manual_seed(seed)
    )
    fake = logits(student, ids)
    assert torch.equal(logits(convert_qat(student, spec), ids), fake)


# --- what a user can get wrong -----------------------------------------------------------


def one_line_error(call, match):
    with pytest.raises(PotstillError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": "int3"}, "weights 'int3' unknown"),
        ({"activations": "fp8"}, "activations 'fp8' unknown"),
        ({"group_size": 0}, "at least 1"),
        ({"group_size": True}, "must be an integer"),
    ],
)
def test_bad_specs(kwargs, match):
    one_line_error(lambda: QuantizationSpec(**kwargs), match)


def test_learned_scales_are_for_qat_only(model):
    spec = QuantizationSpec("int4", learn_scales=True)
    one_line_error(lambda: quantize_model(model, spec), "learn_scales trains the scales")
    assert "learned scales" in spec.describe()


def test_spec_defaults():
    assert QuantizationSpec("int4").group_size == 32
    assert QuantizationSpec("int8").group_size is None  # per channel
    one_line_error(lambda: QuantizationSpec.from_dict({"bits": 4}), r"keys \['bits'\] unknown")


@pytest.mark.parametrize("quantize", [quantize_model, prepare_qat])
def test_a_group_size_that_does_not_divide_a_layer(model, quantize):
    spec = QuantizationSpec("int4", group_size=24)
    message = one_line_error(lambda: quantize(model, spec), "group_size 24 does not divide")
    assert "32 input features of model.layers.0.self_attn.q_proj" in message
    assert "divisor of 32" in message


def test_quantizing_twice_is_refused(model):
    spec = QuantizationSpec("int8")
    quantize_model(model, spec)
    one_line_error(lambda: quantize_model(model, spec), "already quantized")
    one_line_error(lambda: prepare_qat(model, spec), "already quantized")
    one_line_error(lambda: convert_qat(model, spec), "not prepared for QAT")


def test_a_prepared_model_is_converted_not_quantized(model):
    spec = QuantizationSpec("int4", group_size=16)
    prepare_qat(model, spec)
    one_line_error(lambda: quantize_model(model, spec), "prepared for QAT")
    one_line_error(lambda: prepare_qat(model, spec), "prepared for QAT")
    other = QuantizationSpec("int8")
    one_line_error(lambda: convert_qat(model, other), "differs from the one the model was")


def test_save_refuses_a_float_or_differently_quantized_model(model, tiny_tokenizer, tmp_path):
    spec = QuantizationSpec("int8")
    one_line_error(
        lambda: save_quantized(model, tiny_tokenizer, tmp_path / "q", spec), "is not quantized"
    )
    quantize_model(model, spec)
    other = QuantizationSpec("int4")
    one_line_error(
        lambda: save_quantized(model, tiny_tokenizer, tmp_path / "q", other), "not as the spec"
    )
    assert not (tmp_path / "q").exists()


def test_load_refuses_a_float_folder_and_a_corrupt_file(
    model, tiny_tokenizer, tiny_teacher_dir, tmp_path
):
    assert not is_quantized(tiny_teacher_dir)
    one_line_error(lambda: load_quantized(tiny_teacher_dir), "holds no quantized model")
    spec = QuantizationSpec("int4", group_size=16)
    save_quantized(quantize_model(model, spec), tiny_tokenizer, tmp_path / "q", spec)
    weights = tmp_path / "q" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    one_line_error(lambda: load_quantized(tmp_path / "q"), "could not be read")


def _llama(vocab: int, *, hidden: int, layers: int, tied: bool) -> LlamaForCausalLM:
    """A Llama with 4 heads (2 key/value) and an MLP twice as wide, in eval mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()
