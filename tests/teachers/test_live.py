"""`LiveTeacher`: a local model's outputs, only the parts asked for, at the student's
positions; and the cache's refusal of what it does not hold."""

from __future__ import annotations

import pytest
import torch

from potstill.cache.settings import TeachConfig
from potstill.cache.teach import teach
from potstill.data import Blocks
from potstill.data.batch import Batch
from potstill.signals import NOTHING, DenseSignal, SignalRequest, SparseSignal, TeacherOutputs
from potstill.teachers import LiveTeacher
from potstill.util.errors import PotstillError
from tests.conftest import make_llama

VOCAB, LAYERS, HEADS, HIDDEN = 50, 3, 4, 32
B, L, P = 2, 7, 3  # batch, student length, prefix length


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return make_llama(VOCAB, layers=LAYERS, seed=1).eval()


@pytest.fixture(scope="module")
def eager_model():
    model = make_llama(VOCAB, layers=LAYERS, seed=1).eval()
    model.set_attn_implementation("eager")  # sdpa returns no attention maps
    return model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, L), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def prefix() -> torch.Tensor:
    return torch.tensor([7, 8, 9])


def packed(ids: torch.Tensor) -> Batch:
    return Batch.of(ids, ids.clone(), torch.arange(ids.shape[0]))


def reference(model, prefix, ids, **kwargs):
    """The model run by hand on ``cat(prefix, ids)``."""
    with torch.no_grad():
        return model(input_ids=torch.cat([prefix.expand(B, -1), ids], dim=1), **kwargs)


def test_without_a_prefix_the_logits_are_the_models_shifted(model, ids):
    signal = LiveTeacher(model).outputs(packed(ids), SignalRequest()).distributions

    assert isinstance(signal, DenseSignal) and signal.logits.shape == (B, L - 1, VOCAB)
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, :-1]
    assert torch.equal(signal.logits, expected)


def test_with_a_prefix_the_logits_are_cut_back_to_the_students_positions(model, ids, prefix):
    outputs = LiveTeacher(model, prefix_ids=prefix).outputs(packed(ids), SignalRequest())

    logits = outputs.distributions.logits  # (B, L − 1, V)
    assert logits.shape == (B, L - 1, VOCAB)
    assert torch.equal(logits, reference(model, prefix, ids).logits[:, P : P + L - 1])
    # The teacher did read the prefix: its predictions differ from those without it.
    plain = LiveTeacher(model).outputs(packed(ids), SignalRequest()).distributions.logits
    assert not torch.allclose(logits, plain, atol=1e-3)
    assert outputs.hidden_states == {} and outputs.attentions == {}


def test_hidden_states_are_the_students_positions_of_the_asked_layers(model, ids, prefix):
    request = SignalRequest(distributions=False, hidden_layers=(0, 2))
    outputs = LiveTeacher(model, prefix_ids=prefix).outputs(packed(ids), request)

    assert outputs.distributions is None and outputs.attentions == {}
    assert sorted(outputs.hidden_states) == [0, 2]
    expected = reference(model, prefix, ids, output_hidden_states=True).hidden_states
    for layer in (0, 2):
        assert outputs.hidden_states[layer].shape == (B, L, HIDDEN)
        assert torch.equal(outputs.hidden_states[layer], expected[layer][:, P:])


def test_attention_maps_keep_the_students_queries_and_keys(eager_model, ids, prefix):
    request = SignalRequest(distributions=False, attention_layers=(0, 2))
    outputs = LiveTeacher(eager_model, prefix_ids=prefix).outputs(packed(ids), request)

    assert sorted(outputs.attentions) == [0, 2]
    expected = reference(eager_model, prefix, ids, output_attentions=True).attentions
    for layer in (0, 2):
        maps = outputs.attentions[layer]  # (B, heads, L, L)
        assert maps.shape == (B, HEADS, L, L)
        assert torch.equal(maps, expected[layer][:, :, P:, P:])
        # Causal: no student position attends to a later one.
        assert torch.equal(maps.triu(diagonal=1), torch.zeros_like(maps))


def test_one_forward_pass_answers_the_whole_request(eager_model, ids, prefix, monkeypatch):
    calls = []
    real_forward = eager_model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(eager_model, "forward", counting_forward)
    request = SignalRequest(distributions=True, hidden_layers=(1,), attention_layers=(1,))
    outputs = LiveTeacher(eager_model, prefix_ids=prefix).outputs(packed(ids), request)

    assert len(calls) == 1
    assert calls[0]["output_hidden_states"] and calls[0]["output_attentions"]
    assert "attention_mask" not in calls[0]  # packed: no mask needed
    assert outputs.distributions.logits.shape == (B, L - 1, VOCAB)
    assert set(outputs.hidden_states) == set(outputs.attentions) == {1}


def test_padding_is_masked_and_the_prefix_is_never_masked(model, ids, prefix):
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, -3:] = False  # the second example ends in three pads
    batch = Batch(ids, mask, ids.masked_fill(~mask, -100), torch.arange(B))

    logits = LiveTeacher(model, prefix_ids=prefix).outputs(batch, SignalRequest()).distributions
    full_mask = torch.cat([torch.ones(B, P, dtype=torch.bool), mask], dim=1)
    expected = reference(model, prefix, ids, attention_mask=full_mask).logits[:, P : P + L - 1]
    assert torch.equal(logits.logits, expected)
    # The real tokens of the padded example are predicted as if the pads were not there.
    alone = reference(model, prefix, ids).logits[1, P : P + L - 3 - 1]
    torch.testing.assert_close(logits.logits[1, : L - 3 - 1], alone, rtol=1e-5, atol=1e-5)


def test_an_empty_request_runs_nothing(model, ids, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("the teacher ran for an empty request")

    monkeypatch.setattr(model, "forward", no_forward)
    outputs = LiveTeacher(model).outputs(packed(ids), NOTHING)
    assert outputs == TeacherOutputs()
    assert NOTHING.empty and not SignalRequest(distributions=False, hidden_layers=(0,)).empty


@pytest.mark.parametrize(
    "bad_prefix", [torch.tensor([[7, 8]]), torch.tensor([7, 8], dtype=torch.int32)]
)
def test_a_prefix_must_be_one_row_of_long_ids(model, bad_prefix):
    with pytest.raises(ValueError, match=r"prefix_ids must be \(P,\) long"):
        LiveTeacher(model, prefix_ids=bad_prefix)


def test_attention_from_an_sdpa_teacher_says_to_load_it_eager(model, ids):
    request = SignalRequest(distributions=False, attention_layers=(0,))
    with pytest.raises(ValueError, match="eager"):
        LiveTeacher(model).outputs(packed(ids), request)


def test_the_cache_serves_distributions_and_refuses_what_it_does_not_keep(model, tmp_path):
    g = torch.Generator().manual_seed(2)
    data = torch.randint(1, VOCAB, (4, 8), generator=g)
    blocks = Blocks(data, data.clone())
    source = {
        "teacher": "tiny",
        "teacher_sha256": "a" * 64,
        "tokenizer_sha256": "b" * 64,
        "data_fingerprint": "c" * 64,
        "block_size": 8,
    }
    cache = teach(
        LiveTeacher(model),
        blocks,
        directory=tmp_path / "cache",
        source=source,
        settings=TeachConfig(top_k=5),
        temperature=1.0,
        plan=[2, 0, 3, 1],
    )
    batch = blocks.batch(torch.tensor([3, 1]))

    sparse = cache.outputs(batch, SignalRequest()).distributions
    assert isinstance(sparse, SparseSignal) and sparse.ids.shape == (2, 7, 5)
    live = LiveTeacher(model).outputs(batch, SignalRequest()).distributions.logits  # (2, 7, V)
    top5 = live.log_softmax(-1).topk(5, dim=-1)
    assert torch.equal(sparse.ids.long().sort(-1).values, top5.indices.sort(-1).values)
    assert cache.outputs(batch, NOTHING) == TeacherOutputs()

    with pytest.raises(PotstillError, match=r"keeps the hidden states of layers \[\]"):
        cache.outputs(batch, SignalRequest(hidden_layers=(1,)))
    with pytest.raises(PotstillError, match=r"no attention maps.*teach\.enabled=false"):
        cache.outputs(batch, SignalRequest(distributions=False, attention_layers=(0,)))
