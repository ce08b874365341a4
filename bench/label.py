"""Benchmark label scoring: the prefix's key/value cache reused vs the whole prompt per label.

The bundled teacher (``smollm2-135m-instruct``) labels real movie-review sentences (the
Pang–Lee polarity sentences shipped in ``gensim==4.4.0``) as positive / negative, with
label descriptions and two few-shot examples, so the shared prompt prefix is long and
each text short, as in a real labelling task. Both paths score the same texts in one
script run, on the same token ids:

- ``naive``: `potstill.synth.label.score_labels_naive`, one forward over
  ``prefix + text + label`` per text and per label (only the label positions' logits).
- ``prefix cache``: `potstill.synth.label.score_labels`, the prefix run once, its cache
  repeated across each batch of texts, the labels' continuations scored in one batch.

Examples/s is texts labelled per second after a warm-up; the max abs difference between
the two paths' soft labels checks that they agree. Output: a table, also written to
``bench/results/label.txt``.

    .venv/bin/python bench/label.py [--texts 32] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time
import zipfile
from pathlib import Path

import numpy as np

from potstill.models.load import load_causal_lm
from potstill.synth.label import (
    Example,
    Label,
    LabelSpec,
    apply_calibration,
    build_prompt,
    calibrate,
    score_labels,
    score_labels_naive,
)
from potstill.util.fetch import pip_download
from potstill.util.paths import home

TEACHER = "bundled:smollm2-135m-instruct"
DATA_PACKAGE, DATA_MEMBER = "gensim==4.4.0", "gensim/test/test_data/pang_lee_polarity.cor"
RESULTS = Path(__file__).parent / "results" / "label.txt"
SPEEDUP_GOAL = 3.0


def polarity_sentences() -> list[tuple[str, str]]:
    """The 200 (sentence, "positive" | "negative") pairs; each line is
    ``__label__neg sentence``."""
    wheel = pip_download(DATA_PACKAGE, home() / "downloads")
    with zipfile.ZipFile(wheel) as archive:
        # The file is Windows-1252 (0x97 is an em dash), not UTF-8.
        lines = archive.read(DATA_MEMBER).decode("cp1252", errors="replace").splitlines()
    names = {"__label__pos": "positive", "__label__neg": "negative"}
    pairs = []
    for line in lines:
        tag, _, text = line.strip().partition(" ")
        if tag in names and text.strip():
            pairs.append((text.strip(), names[tag]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    pairs = polarity_sentences()
    positives = [p for p in pairs if p[1] == "positive"]
    negatives = [p for p in pairs if p[1] == "negative"]
    shots = [Example(*positives[0]), Example(*negatives[0])]
    # Alternate the classes; the few-shot sentences are not among the texts scored.
    chosen = [p for pair in zip(positives[1:], negatives[1:], strict=False) for p in pair]
    chosen = chosen[: args.texts]
    texts, gold = [t for t, _ in chosen], [g for _, g in chosen]

    spec = LabelSpec(
        [
            Label("positive", "the reviewer liked the movie"),
            Label("negative", "the reviewer disliked the movie"),
        ],
        instruction="Read a sentence from a movie review and say whether it is positive.",
        examples=shots,
    )
    model, tokenizer = load_causal_lm(TEACHER)
    prompt = build_prompt(tokenizer, spec)
    text_tokens = [len(prompt.body_ids(t)) for t in texts]

    score_labels(model, prompt, texts[:2], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    fast = score_labels(model, prompt, texts, batch_size=args.batch_size)
    fast_s = time.perf_counter() - start
    score_labels_naive(model, prompt, texts[:1])  # warm-up
    start = time.perf_counter()
    naive = score_labels_naive(model, prompt, texts)
    naive_s = time.perf_counter() - start

    diff = np.abs(fast.softmax() - naive.softmax()).max()
    logprob_diff = np.abs(fast.logprobs - naive.logprobs).max()
    names = np.array(spec.names)
    accuracy = float(np.mean(names[fast.argmax()] == np.array(gold)))
    prior = calibrate(model, prompt)
    calibrated = apply_calibration(fast.logprobs, prior).argmax(axis=1)
    calibrated_accuracy = float(np.mean(names[calibrated] == np.array(gold)))
    speedup = naive_s / fast_s
    lines = [
        f"label scoring, {TEACHER}, {len(texts)} Pang-Lee polarity sentences "
        f"(gensim==4.4.0), labels {spec.names}, 2 few-shot examples",
        f"prompt: prefix {len(prompt.prefix_ids)} tokens, texts {min(text_tokens)}-"
        f"{max(text_tokens)} tokens (mean {np.mean(text_tokens):.1f}) + closing "
        f"{len(prompt.tail_ids)}, labels {[len(ids) for ids in prompt.label_ids]} tokens "
        f"(with end token), chat template: {not prompt.plain}",
        "",
        f"{'path':<26}{'seconds':>10}{'examples/s':>14}{'speedup':>10}",
        f"{'naive (prompt per label)':<26}{naive_s:>10.2f}{len(texts) / naive_s:>14.2f}"
        f"{1.0:>10.2f}",
        f"{'prefix cache, batch ' + str(args.batch_size):<26}{fast_s:>10.2f}"
        f"{len(texts) / fast_s:>14.2f}{speedup:>10.2f}",
        "",
        f"agreement: max |soft label diff| {diff:.2e}, max |log-likelihood diff| "
        f"{logprob_diff:.2e}, same argmax: {bool((fast.argmax() == naive.argmax()).all())}",
        f"teacher accuracy vs the gold labels (few-shot): {accuracy:.3f} uncalibrated, "
        f"{calibrated_accuracy:.3f} calibrated (content-free prior {prior.round(3).tolist()})",
        f"goal >= {SPEEDUP_GOAL:.0f}x: {'met' if speedup >= SPEEDUP_GOAL else 'NOT met'}",
    ]
    output = "\n".join(lines)
    print(output)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(output + "\n")


if __name__ == "__main__":
    main()
