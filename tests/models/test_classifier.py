import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from potstill.models.classifier import save_classifier, trainable_params, wrap_classifier_adapter
from tests.conftest import make_tokenizer
from tests.tasks.test_classify import tiny_bert


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def tiny_llama_classifier(tokenizer, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForSequenceClassification(config)


MODELS = {"bert": (tiny_bert, "classifier"), "llama": (tiny_llama_classifier, "score")}


def _logits(model, tokenizer):
    enc = tokenizer(["To be, or not to be", "To die"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def test_full_keeps_the_model_and_every_parameter_trains(tokenizer):
    model = tiny_bert(tokenizer)
    assert wrap_classifier_adapter(model, "full") is model
    assert trainable_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("adapter", ["lora", "pissa"])
def test_adapters_train_only_adapters_and_the_head(tokenizer, arch, adapter):
    build, head = MODELS[arch]
    base = build(tokenizer)
    before = _logits(base, tokenizer)
    model = wrap_classifier_adapter(base, adapter, r=4, alpha=8)
    # Both start from the model itself: LoRA's B = 0, PiSSA's residual + principal part = W.
    torch.testing.assert_close(_logits(model, tokenizer), before, atol=1e-4, rtol=1e-3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any(f"{head}" in n for n in trainable)
    # BERT's pooler feeds the head (and a sentence encoder's was never trained): it trains too
    extra = ".pooler." if arch == "bert" else f".{head}."
    assert all("lora_" in n or f".{head}." in n or extra in n for n in trainable), trainable
    assert (arch == "bert") == any(".pooler." in n for n in trainable)
    assert 0 < trainable_params(model) < sum(p.numel() for p in model.parameters()) / 2


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("adapter", ["lora", "pissa"])
def test_saved_merged_classifier_reloads_with_equal_logits(tokenizer, tmp_path, arch, adapter):
    build, _ = MODELS[arch]
    model = wrap_classifier_adapter(build(tokenizer), adapter, r=4, alpha=8)
    with torch.no_grad():  # as if trained: adapters and head away from their init
        g = torch.Generator().manual_seed(3)
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    expected = _logits(model, tokenizer)

    save_classifier(model, tokenizer, tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert not hasattr(reloaded, "peft_config")
    torch.testing.assert_close(_logits(reloaded, tokenizer), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_logits(model, tokenizer), expected)  # left unmerged in memory
    assert (tmp_path / "student" / "tokenizer.json").is_file()


def test_unknown_adapter_is_refused(tokenizer):
    with pytest.raises(ValueError, match="full, lora, pissa"):
        wrap_classifier_adapter(tiny_bert(tokenizer), "dora")
