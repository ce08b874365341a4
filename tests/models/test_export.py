"""Exports read back: each format's logits against the HF model's, on tiny in-process models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from potstill.models.export import (
    GGUF_TOLERANCES,
    LLAMA_CPP_TOLERANCES,
    ONNX_TOLERANCE,
    check_gguf,
    check_llama_cpp,
    check_onnx,
    export_gguf,
    export_hf,
    export_onnx,
    rope_permute,
)
from potstill.models.student import layer_subset, save_student
from potstill.util.errors import PotstillError
from tests.conftest import llama_folder, make_llama, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<eos>{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama student (hidden 32, intermediate 64: whole q8_0/q4_0 blocks of 32)."""
    return llama_folder(tmp_path_factory.mktemp("student"), tokenizer)


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ---- gguf -------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_gguf_reads_back_within_tolerance(student_dir, tmp_path, qtype):
    path = export_gguf(student_dir, tmp_path / f"student-{qtype}.gguf", qtype=qtype)
    check = check_gguf(student_dir, path)
    assert check.within(GGUF_TOLERANCES[qtype]), check
    assert check.tokens_match


def test_gguf_tolerances_are_ordered_by_precision(student_dir, tmp_path):
    diffs = [
        check_gguf(student_dir, export_gguf(student_dir, tmp_path / f"{q}.gguf", qtype=q))
        for q in ("f16", "q8_0", "q4_0")
    ]
    assert diffs[0].max_abs_diff < 1e-3  # float16 weights: tight
    assert diffs[0].max_abs_diff < diffs[1].max_abs_diff < diffs[2].max_abs_diff
    assert diffs[0].mean_kl < diffs[1].mean_kl < diffs[2].mean_kl


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_gguf_metadata_names_and_types(student_dir, tmp_path, qtype):
    import gguf

    path = export_gguf(student_dir, tmp_path / "student.gguf", qtype=qtype)
    reader = gguf.GGUFReader(path)

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    expected = {
        "llama.context_length": 256,
        "llama.embedding_length": 32,
        "llama.block_count": 4,
        "llama.feed_forward_length": 64,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 8,
        "llama.vocab_size": 300,
    }
    assert {key: value(key) for key in expected} == expected
    assert value("llama.rope.freq_base") == pytest.approx(10000.0)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"
    assert len(value("tokenizer.ggml.tokens")) == 300
    assert value("tokenizer.ggml.tokens")[0] == "<eos>"
    assert value("tokenizer.ggml.token_type")[0] == gguf.TokenType.CONTROL
    assert len(value("tokenizer.ggml.merges")) > 0
    assert value("tokenizer.ggml.eos_token_id") == 0
    assert value("tokenizer.ggml.padding_token_id") == 0
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == CHAT_TEMPLATE

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 4)
    hf_names = AutoModelForCausalLM.from_pretrained(student_dir).state_dict().keys()
    wanted = {names.get_name(n, try_suffixes=(".weight",)) for n in hf_names} - {"output.weight"}
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert set(types) == wanted  # tied: the embedding is written once, as token_embd
    Q = gguf.GGMLQuantizationType
    matrix = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[qtype]
    embedding = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q8_0}[qtype]
    for t in reader.tensors:
        if len(t.shape) == 1:
            assert t.tensor_type == Q.F32, t.name  # norms stay float32
        elif t.name == "token_embd.weight":
            assert t.tensor_type == embedding
        else:
            assert t.tensor_type == matrix, t.name


def test_untied_output_is_written_and_reads_back(tokenizer, tmp_path):
    model = make_llama(len(tokenizer), layers=2)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    model.save_pretrained(tmp_path / "untied")
    tokenizer.save_pretrained(tmp_path / "untied")
    path = export_gguf(tmp_path / "untied", tmp_path / "untied.gguf")
    import gguf

    assert "output.weight" in {t.name for t in gguf.GGUFReader(path).tensors}
    assert check_gguf(tmp_path / "untied", path).within(GGUF_TOLERANCES["f16"])


@pytest.mark.parametrize(("heads", "rows"), [(4, 32), (2, 16)])
def test_rope_permute_is_undone_by_the_transformers_reader(heads, rows):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.randn(rows, 32)
    permuted = rope_permute(weight, heads).numpy()
    back = LlamaTensorProcessor()._reverse_permute_weights(permuted, heads, heads)
    assert np.array_equal(back, weight.numpy())
    assert not np.array_equal(permuted, weight.numpy())


def test_gguf_refuses_another_architecture_in_one_line(tokenizer, tmp_path):
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(PotstillError) as error:
        export_gguf(tmp_path / "gpt2", tmp_path / "gpt2.gguf")
    message = str(error.value)
    assert "\n" not in message
    assert "llama" in message and "gpt2 (GPT2LMHeadModel)" in message
    assert not (tmp_path / "gpt2.gguf").exists()
    assert _leftovers(tmp_path) == []


def test_gguf_refuses_a_tokenizer_that_is_not_byte_level_bpe(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>"], show_progress=False)
    backend.train_from_iterator(["to be or not to be that is the question"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    make_llama(len(tokenizer), layers=1).save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    with pytest.raises(PotstillError, match="byte-level BPE") as error:
        export_gguf(tmp_path / "student", tmp_path / "student.gguf")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "student.gguf").exists()
    assert _leftovers(tmp_path) == []


def test_gguf_refuses_an_unknown_type(student_dir, tmp_path):
    with pytest.raises(PotstillError, match="q3_k"):
        export_gguf(student_dir, tmp_path / "x.gguf", qtype="q3_k")


def test_failed_gguf_export_leaves_nothing_and_keeps_the_old_file(
    student_dir, tmp_path, monkeypatch
):
    import gguf

    def broken(data, qtype):
        raise RuntimeError("disk full")

    out = tmp_path / "student.gguf"
    monkeypatch.setattr(gguf.quants, "quantize", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(student_dir, out, qtype="q8_0")
    assert list(tmp_path.iterdir()) == []

    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(student_dir, out, qtype="q8_0", overwrite=True)
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(student_dir, tmp_path):
    out = tmp_path / "student.gguf"
    out.write_bytes(b"old")
    with pytest.raises(PotstillError, match="overwrite"):
        export_gguf(student_dir, out)
    assert out.read_bytes() == b"old"
    export_gguf(student_dir, out, overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_llama_cpp_runs_the_gguf_within_tolerance(student_dir, tmp_path, qtype):
    pytest.importorskip("llama_cpp")
    path = export_gguf(student_dir, tmp_path / f"student-{qtype}.gguf", qtype=qtype)
    check = check_llama_cpp(student_dir, path)
    assert check.within(LLAMA_CPP_TOLERANCES[qtype]), check
    assert check.tokens_match


# ---- gguf of a potstill-quantized model: its integers kept --------------------------------


def _quantized(student_dir: Path, folder: Path, **spec) -> Path:
    from potstill.models.load import load_causal_lm
    from potstill.models.quantize import QuantizationSpec, quantize_model
    from potstill.models.quantized_io import save_quantized

    model, tokenizer = load_causal_lm(str(student_dir))
    spec = QuantizationSpec(**spec)
    save_quantized(quantize_model(model, spec), tokenizer, folder, spec)
    return folder


@pytest.mark.parametrize(
    ("spec", "qtype"),
    [({"weights": "int4"}, "q4_0"), ({"weights": "int8"}, "q8_0")],  # groups of 32; per row
)
def test_gguf_of_a_quantized_model_holds_its_integers(student_dir, tmp_path, spec, qtype):
    """Each block in the file is the model's own integers under its group's scale in
    float16: dequantized, exactly integer × float16(scale); and the file reads back as the
    quantized model, not re-rounded."""
    import gguf

    from potstill.models.quantized_io import load_quantized

    folder = _quantized(student_dir, tmp_path / "q", **spec)
    path = export_gguf(folder, tmp_path / "q.gguf")
    model, _ = load_quantized(folder)
    reader = gguf.GGUFReader(path)
    assert (
        reader.fields["general.file_type"].parts[-1][0]
        == {
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[qtype]
    )
    tensors = {t.name: t for t in reader.tensors}
    heads = model.config.num_attention_heads
    kv_heads = model.config.num_key_value_heads
    for hf_name, gguf_name, rows in [
        ("model.embed_tokens.weight", "token_embd.weight", None),
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", heads),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", kv_heads),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight", None),
    ]:
        weight = model.get_parameter(hf_name)
        group = weight.qdata.shape[1] // weight.scale.shape[1]
        scale = weight.scale.to(torch.float16).float().repeat_interleave(group, dim=1)
        expected = weight.qdata.float() * scale
        if rows is not None:
            expected = rope_permute(expected, rows)
        stored = tensors[gguf_name]
        assert stored.tensor_type.name == qtype.upper()
        got = gguf.quants.dequantize(stored.data, stored.tensor_type)
        assert np.array_equal(got.reshape(expected.shape), expected.numpy()), hf_name
    check = check_gguf(folder, path)  # transformers dequantizes the file
    assert check.top1_agreement == 1.0 and check.max_abs_diff < 5e-3 * max(1, check.logit_scale)


def test_gguf_of_a_quantized_model_in_llama_cpp(student_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    folder = _quantized(student_dir, tmp_path / "q", weights="int4")
    check = check_llama_cpp(folder, export_gguf(folder, tmp_path / "q.gguf"))
    assert check.within(LLAMA_CPP_TOLERANCES["q8_0"]), check  # as close as q8_0 to float


@pytest.mark.parametrize(
    ("spec", "qtype", "message"),
    [
        ({"weights": "int4", "group_size": 16}, None, "in groups of 16; a GGUF block holds 32"),
        ({"weights": "int8", "activations": "int8"}, None, "quantizes activations to int8"),
        ({"weights": "int4"}, "q8_0", "its integers go into GGUF as q4_0, not q8_0"),
    ],
)
def test_gguf_of_a_quantized_model_refuses_what_it_cannot_keep(
    student_dir, tmp_path, spec, qtype, message
):
    folder = _quantized(student_dir, tmp_path / "q", **spec)
    with pytest.raises(PotstillError, match=message):
        export_gguf(folder, tmp_path / "q.gguf", qtype=qtype)
    assert not (tmp_path / "q.gguf").exists() and not _leftovers(tmp_path)


# ---- onnx -------------------------------------------------------------------------------


def test_onnx_reads_back_within_tolerance(student_dir, tmp_path):
    out = export_onnx(student_dir, tmp_path / "onnx")
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    check = check_onnx(student_dir, out)  # batch 1 of three lengths, then batch 3
    assert check.within(ONNX_TOLERANCE), check
    assert check.tokens_match


def test_failed_onnx_export_leaves_nothing(student_dir, tmp_path, monkeypatch):
    def broken(model, args, f, **kwargs):
        Path(f).write_bytes(b"half a model")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(student_dir, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


# ---- hf ---------------------------------------------------------------------------------


@pytest.fixture
def lora_student(tmp_path, tokenizer):
    """A LoRA-wrapped tiny Llama whose adapters are not zero, and its base folder."""
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    make_llama(len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval(), base_dir


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("To be, or not to be, that is the question")])
    with torch.no_grad():
        return model(ids).logits


def test_hf_export_of_a_lora_student_equals_the_adapter_model(lora_student, tokenizer, tmp_path):
    model, base_dir = lora_student
    save_student(model, tokenizer, tmp_path / "student")
    out = export_hf(tmp_path / "student", tmp_path / "hf", keep_adapter=True)

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(exported, tokenizer), _logits(model, tokenizer))
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    assert not torch.allclose(_logits(base, tokenizer), _logits(model, tokenizer), atol=1e-3)

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "adapter"} <= names
    assert not any(n.endswith(".bin") for n in names)
    assert (out / "adapter" / "adapter_config.json").is_file()
    note = json.loads((out / "export.json").read_text())
    assert note["adapter_base"] == str(base_dir)
    assert note["adapter_base_same_shape"] is True


def test_kept_adapter_of_a_layer_subset_is_flagged_as_not_fitting_its_base(
    lora_student, tokenizer, tmp_path
):
    from peft import LoraConfig, get_peft_model

    _, base_dir = lora_student
    subset = layer_subset(AutoModelForCausalLM.from_pretrained(base_dir), [0, 3])
    lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    save_student(get_peft_model(subset, lora), tokenizer, tmp_path / "student")
    out = export_hf(tmp_path / "student", tmp_path / "hf", keep_adapter=True)
    note = json.loads((out / "export.json").read_text())
    assert note["adapter_base"] == str(base_dir)
    assert note["adapter_base_same_shape"] is False


def test_hf_export_merges_a_bare_adapter_folder(lora_student, tokenizer, tmp_path):
    model, _ = lora_student
    model.save_pretrained(tmp_path / "adapter")  # adapter weights only; base named inside
    out = export_hf(tmp_path / "adapter", tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(exported, tokenizer), _logits(model, tokenizer))
    assert not (out / "adapter").exists()


def test_keep_adapter_without_an_adapter_is_one_line(student_dir, tmp_path):
    with pytest.raises(PotstillError) as error:
        export_hf(student_dir, tmp_path / "hf", keep_adapter=True)
    assert "\n" not in str(error.value) and "adapter/" in str(error.value)
    assert not (tmp_path / "hf").exists()


def test_failed_hf_export_keeps_the_old_folder(student_dir, tmp_path, monkeypatch):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def broken(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("weights write failed")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken)
    with pytest.raises(RuntimeError, match="weights write failed"):
        export_hf(student_dir, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _leftovers(tmp_path) == []
