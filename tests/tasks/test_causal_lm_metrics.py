"""score_models against independent references on tiny in-process Llama models, and on
"models" whose logits are a random table (calibration against a float64 numpy ECE)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from potstill.evaluation.size import count_params, size_on_disk
from potstill.tasks.causal_lm import score_models
from potstill.tasks.causal_lm.metrics import WORST, TokenBands
from potstill.util.errors import PotstillError
from tests.conftest import make_llama

VOCAB = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(seed: int, vocab_size: int = VOCAB) -> transformers.LlamaForCausalLM:
    return make_llama(vocab_size, layers=2, seed=seed).eval()


@pytest.fixture(scope="module")
def blocks() -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both (5, 16); some labels are -100, including a whole row."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (5, 16), generator=generator)
    labels = input_ids.clone()
    labels[0, 10:] = -100
    labels[2, :4] = -100
    labels[3, 1:] = -100  # this block scores nothing (label 0 is never scored anyway)
    return input_ids, labels


def reference(model, input_ids, labels, teacher=None) -> dict[str, float]:
    """Plain-torch scores over the flattened scored positions, float64 reductions."""
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[:, :-1].float()  # (N, L-1, V)
        target = labels[:, 1:]  # (N, L-1)
        mask = target != -100
        ce = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100)
        result = {"loss": ce.item(), "tokens": int(mask.sum())}
        if teacher is not None:
            teacher_logits = teacher(input_ids=input_ids).logits[:, :-1].float()
            student_logprobs = F.log_softmax(logits[mask].double(), -1)
            teacher_logprobs = F.log_softmax(teacher_logits[mask].double(), -1)
            kl = F.kl_div(
                student_logprobs, teacher_logprobs, reduction="batchmean", log_target=True
            )
            agree = logits[mask].argmax(-1) == teacher_logits[mask].argmax(-1)
            result.update(kl=kl.item(), top1=agree.double().mean().item())
    return result


def test_perplexity_is_exp_of_cross_entropy(blocks):
    input_ids, labels = blocks
    model = tiny_llama(1)
    scores = score_models({"m": model}, input_ids, labels, teacher=None, batch_size=2)["m"]
    expected = reference(model, input_ids, labels)
    assert scores.tokens == expected["tokens"] == 9 + 15 + 12 + 0 + 15
    assert scores.loss == pytest.approx(expected["loss"], rel=1e-5)
    assert scores.perplexity == pytest.approx(math.exp(expected["loss"]), rel=1e-5)
    assert scores.top1 is None and scores.kl is None


def test_minus_100_positions_do_not_count(blocks):
    input_ids, labels = blocks
    model = tiny_llama(1)
    changed = input_ids.clone()
    changed[0, 11:] = (changed[0, 11:] + 1) % VOCAB  # tokens after the last scored one
    before = score_models({"m": model}, input_ids, labels, teacher=None)["m"]
    after = score_models({"m": model}, changed, labels, teacher=None)["m"]
    assert after.loss == pytest.approx(before.loss, rel=1e-6)

    nothing = torch.full_like(labels, -100)
    empty = score_models({"m": model}, input_ids, nothing, teacher=None)["m"]
    assert empty.tokens == 0 and math.isnan(empty.loss)


def test_batch_size_does_not_change_scores(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2)}
    one = score_models(models, input_ids, labels, teacher="teacher", batch_size=1)
    all_ = score_models(models, input_ids, labels, teacher="teacher", batch_size=8)
    for name in models:
        assert one[name].loss == pytest.approx(all_[name].loss, rel=1e-5)
    assert one["student"].kl == pytest.approx(all_["student"].kl, rel=1e-5)
    assert one["student"].top1 == all_["student"].top1


def test_model_against_itself_agrees_fully(blocks):
    input_ids, labels = blocks
    model = tiny_llama(1)
    scores = score_models({"teacher": model, "copy": model}, input_ids, labels, teacher="teacher")
    assert scores["copy"].top1 == 1.0
    assert scores["copy"].kl == pytest.approx(0.0, abs=1e-6)
    assert scores["teacher"].top1 is None and scores["teacher"].kl is None
    assert scores["copy"].loss == pytest.approx(scores["teacher"].loss, rel=1e-6)


def test_agreement_matches_reference(blocks):
    input_ids, labels = blocks
    teacher, student = tiny_llama(1), tiny_llama(2)
    scores = score_models(
        {"student": student, "teacher": teacher}, input_ids, labels, teacher="teacher"
    )
    expected = reference(student, input_ids, labels, teacher=teacher)
    assert scores["student"].kl == pytest.approx(expected["kl"], rel=1e-4)
    assert scores["student"].kl > 0
    assert scores["student"].top1 == pytest.approx(expected["top1"], abs=1e-12)


def test_each_model_runs_once_per_batch(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2), "baseline": tiny_llama(3)}
    calls = dict.fromkeys(models, 0)
    for name, model in models.items():
        model.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    done = []
    score_models(models, input_ids, labels, teacher="teacher", batch_size=2, progress=done.append)
    assert calls == {"teacher": 3, "student": 3, "baseline": 3}
    assert done == [2, 4, 5]


def test_modes_are_restored(blocks):
    input_ids, labels = blocks
    training, evaluating = tiny_llama(1).train(), tiny_llama(2).eval()
    seen = []
    training.register_forward_hook(lambda module, *_: seen.append(module.training))
    score_models({"a": training, "b": evaluating}, input_ids, labels, teacher="a")
    assert seen and not any(seen)
    assert training.training and not evaluating.training


def test_user_errors(blocks):
    input_ids, labels = blocks
    with pytest.raises(PotstillError, match="teacher"):
        score_models({"m": tiny_llama(1)}, input_ids, labels, teacher="nope")
    models = {"teacher": tiny_llama(1), "other": tiny_llama(2, vocab_size=VOCAB + 8)}
    with pytest.raises(PotstillError, match="vocab mismatch"):
        score_models(models, input_ids, labels, teacher="teacher")


def test_count_params():
    assert count_params(torch.nn.Linear(3, 4)) == 3 * 4 + 4
    model = tiny_llama(1)
    assert count_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside peft, not here
def test_count_params_with_lora_adapter():
    peft = pytest.importorskip("peft")
    base = tiny_llama(1)
    before = count_params(base)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4)
    wrapped = peft.get_peft_model(base, lora)
    # Per layer: q_proj A (2×32) + B (32×2), v_proj A (2×32) + B (16×2).
    per_layer = (2 * 32 + 32 * 2) + (2 * 32 + 16 * 2)
    assert count_params(wrapped) == before + 2 * per_layer


def test_size_on_disk(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "extra.bin").write_bytes(b"x" * 200)
    (tmp_path / "model.gguf").write_bytes(b"x" * 30)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 5000)
    (tmp_path / "training_args.bin").write_bytes(b"x" * 7)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "old.safetensors").write_bytes(b"x" * 9)
    assert size_on_disk(tmp_path) == 1230
    assert size_on_disk(tmp_path / "tokenizer.json") == 5000
    with pytest.raises(PotstillError, match="no model"):
        size_on_disk(tmp_path / "missing")


# ---- calibration --------------------------------------------------------------------------


class TableLM(torch.nn.Module):
    """A causal LM whose logits at each position are the row of ``table`` (V, V) of the
    token there: random logits that need no context, so any split into batches sees the same."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.float(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])  # (B, L, V)


def ece_reference(logits: np.ndarray, target: np.ndarray, bins: int = 15) -> float:
    """Σ_b (n_b / N)·|acc_b − conf_b| in float64 over bins (b/bins, (b+1)/bins]."""
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    confidence, correct = probs.max(-1), probs.argmax(-1) == target
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            total += in_bin.mean() * gap
    return total


def random_table_case(seed: int, scale: float) -> tuple[TableLM, torch.Tensor, torch.Tensor]:
    """A random-logit model and blocks whose targets are its argmax about half the time."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(VOCAB, VOCAB, generator=generator) * scale
    input_ids = torch.randint(0, VOCAB, (6, 20), generator=generator)
    labels = torch.randint(0, VOCAB, (6, 20), generator=generator)
    follows_argmax = torch.rand(6, 19, generator=generator) < 0.5
    labels[:, 1:] = torch.where(follows_argmax, table.argmax(-1)[input_ids[:, :-1]], labels[:, 1:])
    labels[1, :7] = -100
    return TableLM(table), input_ids, labels


@pytest.mark.parametrize(("seed", "scale"), [(0, 0.5), (1, 3.0), (2, 10.0)])
def test_ece_matches_a_float64_reference_on_random_logits(seed, scale):
    model, input_ids, labels = random_table_case(seed, scale)
    ece = score_models({"m": model}, input_ids, labels, teacher=None, batch_size=4)["m"].ece
    mask = labels[:, 1:] != -100
    logits = model.table.detach()[input_ids[:, :-1]][mask].numpy()  # (M, V)
    expected = ece_reference(logits, labels[:, 1:][mask].numpy())
    assert ece == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= ece <= 1.0


def test_ece_does_not_depend_on_the_batch_size():
    model, input_ids, labels = random_table_case(3, 3.0)
    one = score_models({"m": model}, input_ids, labels, teacher=None, batch_size=1)["m"]
    all_ = score_models({"m": model}, input_ids, labels, teacher=None, batch_size=6)["m"]
    assert one.ece == pytest.approx(all_.ece, abs=1e-12)


def calibration_toy(rows: dict[int, list[float]]) -> TableLM:
    """A 4-token model predicting ``rows[token]`` (probabilities) after ``token``."""
    table = torch.full((4, 4), -1e4)
    for token, probs in rows.items():
        table[token] = torch.tensor(probs).clamp_min(1e-30).log().clamp_min(-1e4)
    return TableLM(table)


def test_ece_is_zero_when_confidence_is_accuracy():
    # After token 2 the model says 0 with p = 0.5 and is right 1 time in 2; after token 3
    # it says 1 with p = 0.75 and is right 3 times in 4.
    model = calibration_toy({2: [0.5, 0.25, 0.25, 0.0], 3: [0.125, 0.75, 0.125, 0.0]})
    input_ids = torch.tensor([[2, 2, 3, 3, 3, 3, 0]])
    labels = torch.tensor([[-100, 0, 1, 1, 1, 1, 2]])
    scores = score_models({"m": model}, input_ids, labels, teacher=None)["m"]
    assert scores.tokens == 6
    assert scores.ece == pytest.approx(0.0, abs=1e-6)


def test_ece_is_one_when_always_sure_and_always_wrong():
    model = calibration_toy({2: [1.0, 0.0, 0.0, 0.0]})
    input_ids = torch.tensor([[2, 2, 2, 0]])
    labels = torch.tensor([[-100, 1, 3, 2]])
    assert score_models({"m": model}, input_ids, labels, teacher=None)["m"].ece == pytest.approx(
        1.0, abs=1e-6
    )


def test_ece_keeps_neighbouring_bins_apart():
    # p = 0.95 (bin 15 of 15) always right, p = 0.9 (bin 14) always wrong:
    # (1/2)·|1 − 0.95| + (1/2)·|0 − 0.9| = 0.475, not |1/2 − 0.925| as one bin would give.
    model = calibration_toy({2: [0.95, 0.05, 0.0, 0.0], 3: [0.05, 0.9, 0.05, 0.0]})
    input_ids = torch.tensor([[2, 3, 0]])
    labels = torch.tensor([[-100, 0, 3]])
    ece = score_models({"m": model}, input_ids, labels, teacher=None)["m"].ece
    assert ece == pytest.approx(0.475, abs=1e-6)


def test_every_model_has_an_ece_and_no_tokens_gives_nan(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2)}
    scores = score_models(models, input_ids, labels, teacher="teacher")
    assert all(0.0 <= s.ece <= 1.0 for s in scores.values())
    nothing = torch.full_like(labels, -100)
    empty = score_models(models, input_ids, nothing, teacher="teacher")
    assert math.isnan(empty["student"].ece) and empty["student"].worst == []


# ---- frequency bands ---------------------------------------------------------------------


def test_bands_rank_by_training_frequency():
    ids = torch.tensor([[3, 3, 3, 3, 1, 1, 1, 9, 9, 9], [7, 7, 0, 0, 5, 5, 5, 5, 5, 4]])
    bands = TokenBands.by_frequency(ids, edges=(2, 4))
    assert bands.names == ("1–2", "3–4", ">4 or unseen")
    # counts: 5 -> 5, 3 -> 4, then 1 and 9 tie at 3 (lower id first), 0 and 7 tie at 2, 4 -> 1
    assert bands.of(torch.tensor([5, 3, 1, 9, 0, 7, 4])).tolist() == [0, 0, 1, 1, 2, 2, 2]
    # never seen, inside or past the end of the counted ids: the last band
    assert bands.of(torch.tensor([2, 6, 8, 10, 500])).tolist() == [2, 2, 2, 2, 2]
    default = TokenBands.by_frequency(ids)
    assert default.names == ("1–100", "101–1,000", "1,001–10,000", ">10,000 or unseen")
    assert TokenBands.by_frequency(torch.tensor([], dtype=torch.long)).of(
        torch.tensor([0, 3])
    ).tolist() == [3, 3]


@pytest.mark.parametrize(
    ("ids", "edges", "message"),
    [
        (torch.tensor([0.5, 1.0]), (2,), "integer"),
        (torch.tensor([True, False]), (2,), "integer"),
        (torch.tensor([1, -2]), (2,), ">= 0"),
        (torch.tensor([1, 2]), (), "increasing"),
        (torch.tensor([1, 2]), (5, 5), "increasing"),
        (torch.tensor([1, 2]), (10, 5), "increasing"),
        (torch.tensor([1, 2]), (0, 5), "increasing"),
    ],
)
def test_bands_refuse_bad_arguments(ids, edges, message):
    with pytest.raises(ValueError, match=message):
        TokenBands.by_frequency(ids, edges=edges)


def per_position(models, input_ids, labels):
    """Float64 per-position NLL, argmax and log-probs of each model, and the positions."""
    mask = labels[:, 1:] != -100
    out = {}
    with torch.no_grad():
        for name, model in models.items():
            logits = model(input_ids=input_ids).logits[:, :-1][mask].double()  # (M, V)
            logprobs = F.log_softmax(logits, -1)
            target = labels[:, 1:][mask]
            nll = -logprobs.gather(-1, target[:, None]).squeeze(-1)
            out[name] = {"logprobs": logprobs, "nll": nll, "top": logits.argmax(-1)}
    return out, mask.nonzero(), labels[:, 1:][mask]


def test_band_scores_match_a_reference(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2), "baseline": tiny_llama(3)}
    generator = torch.Generator().manual_seed(5)
    train_ids = (torch.rand(400, generator=generator) ** 3 * VOCAB).long()  # skewed to low ids
    bands = TokenBands.by_frequency(train_ids, edges=(4, 16))
    scores = score_models(models, input_ids, labels, teacher="teacher", batch_size=2, bands=bands)

    counts = Counter(train_ids.tolist())
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    rank = {token: i + 1 for i, token in enumerate(ranked)}

    def band(token: int) -> int:
        r = rank.get(token)
        return 2 if r is None else 0 if r <= 4 else 1 if r <= 16 else 2

    reference, _, target = per_position(models, input_ids, labels)
    in_band = torch.tensor([band(t) for t in target.tolist()])  # (M,)
    agree = reference["student"]["top"] == reference["teacher"]["top"]
    for name, s in scores.items():
        assert [b.band for b in s.bands] == ["1–4", "5–16", ">16 or unseen"]
        assert sum(b.tokens for b in s.bands) == s.tokens
        for b, row in enumerate(s.bands):
            here = in_band == b
            assert row.tokens == int(here.sum()) > 0
            assert row.loss == pytest.approx(reference[name]["nll"][here].mean().item(), rel=1e-5)
            if name == "teacher":
                assert row.top1 is None
        if name == "student":
            expected = [agree[in_band == b].double().mean().item() for b in range(3)]
            assert [row.top1 for row in s.bands] == pytest.approx(expected, abs=1e-12)
    without = score_models(models, input_ids, labels, teacher="teacher")
    assert without["student"].bands is None
    assert without["student"].loss == pytest.approx(scores["student"].loss, rel=1e-12)


# ---- worst disagreements -----------------------------------------------------------------


def test_worst_disagreements_are_the_largest_kls(blocks):
    input_ids, labels = blocks
    models = {"teacher": tiny_llama(1), "student": tiny_llama(2)}
    reference, where, target = per_position(models, input_ids, labels)
    kl = F.kl_div(
        reference["student"]["logprobs"],
        reference["teacher"]["logprobs"],
        reduction="none",
        log_target=True,
    ).sum(-1)  # (M,)
    largest = kl.argsort(descending=True)[:WORST]
    expected = [
        (
            where[i, 0].item(),
            where[i, 1].item(),
            reference["teacher"]["top"][i].item(),
            reference["student"]["top"][i].item(),
            target[i].item(),
        )
        for i in largest.tolist()
    ]
    for batch_size in (1, 2, 8):
        scores = score_models(models, input_ids, labels, teacher="teacher", batch_size=batch_size)
        worst = scores["student"].worst
        assert len(worst) == WORST < len(target)
        found = [(d.block, d.position, d.teacher_top, d.model_top, d.target) for d in worst]
        assert found == expected
        assert [d.kl for d in worst] == pytest.approx(kl[largest].tolist(), rel=1e-4)
        assert scores["teacher"].worst is None
    for d in worst:  # the position predicts the label after it, from the context up to it
        assert labels[d.block, d.position + 1].item() == d.target


def test_no_teacher_no_worst(blocks):
    input_ids, labels = blocks
    assert score_models({"m": tiny_llama(1)}, input_ids, labels, teacher=None)["m"].worst is None


def test_argument_errors(blocks):
    input_ids, labels = blocks
    model = {"m": tiny_llama(1)}
    with pytest.raises(ValueError, match=r"torch\.long"):
        score_models(model, input_ids.float(), labels, teacher=None)
    with pytest.raises(ValueError, match=r"torch\.long"):
        score_models(model, input_ids, labels.int(), teacher=None)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        score_models(model, input_ids[0], labels[0], teacher=None)
    with pytest.raises(ValueError, match="batch_size"):
        score_models(model, input_ids, labels, teacher=None, batch_size=0)
    with pytest.raises(ValueError, match="TokenBands"):
        score_models(model, input_ids, labels, teacher=None, bands=torch.zeros(VOCAB))
