"""Benchmark local generation: the batched KV-cache engine vs ``model.generate`` one prompt
at a time.

The bundled teacher (``smollm2-135m-instruct``) answers the same chat-templated prompts
greedily with the same ``max_new_tokens`` both ways, in one script run:

- ``model.generate``: transformers' own decoding, one prompt at a time (batch 1, no
  padding): what a loop over prompts does without an engine.
- ``engine @B``: `potstill.generation.Engine.generate`, all prompts at once, decoded in
  batches of up to B rows (left-padded, finished rows dropped from the batch and its KV
  cache), as `potstill generate` runs a local teacher.

Throughput is generated tokens per second (the end token counted, as the OpenAI usage
counts it) after a warm-up. Greedy outputs are compared text for text; where they
differ, the first differing token is found and the margin between the reference's top
two logits there is printed: a near-tie that float rounding in a padded batch can flip.
Output: a table, also written to ``bench/results/generate.txt``.

    .venv/bin/python bench/generate.py [--prompts 32] [--max-tokens 64] [--batches 8,32]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from potstill.generation import Engine, GenerationSettings, chat_text
from potstill.models.load import load_causal_lm

TEACHER = "bundled:smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results" / "generate.txt"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis in two sentences.",
    "List three uses of a paperclip.",
    "What does a compiler do?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7? Explain your steps.",
    "Describe a cat to someone who has never seen one.",
    "Name two planets larger than Earth.",
    "What is the difference between weather and climate?",
    "Suggest a name for a bakery.",
    "How do vaccines work?",
    "Write one sentence about the ocean.",
    "What is a prime number?",
    "Give a short definition of democracy.",
    "How many legs does a spider have?",
    "What should I pack for a day hike?",
    "Summarise the plot of Romeo and Juliet.",
    "Why do we have seasons?",
    "Write a limerick about a teapot.",
    "What is the boiling point of water at sea level?",
    "Explain what a database index is.",
    "Give two reasons to learn a second language.",
    "What is gravity?",
    "Recommend a healthy breakfast.",
    "What is the largest mammal?",
    "How does a rainbow form?",
    "Write a motivational sentence for a student.",
    "What is machine learning, briefly?",
    "Describe the taste of a lemon.",
]


def reference(model: Any, tokenizer: Any, prompts: list[list[int]], max_tokens: int) -> list:
    """``model.generate`` greedy, one prompt at a time: the new token ids of each."""
    outputs = []
    for ids in prompts:
        inputs = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                max_new_tokens=max_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


def first_difference(
    model: Any, tokenizer: Any, prompt: list[int], ref_ids: list[int], engine_ids: list[int]
) -> str:
    """Where the engine's tokens leave the reference's, and the reference's top-2 logit
    margin there (from an unpadded forward over the prompt and the common prefix)."""
    t = next(
        (i for i, (a, b) in enumerate(zip(ref_ids, engine_ids, strict=False)) if a != b),
        min(len(ref_ids), len(engine_ids)),
    )
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + ref_ids[:t]])).logits[0, -1]  # (V,)
    top = logits.topk(2).values
    return f"token {t}: margin {float(top[0] - top[1]):.2e} between the top two logits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batches", default="8,32", help="engine max_batch values")
    args = parser.parse_args()

    model, tokenizer = load_causal_lm(TEACHER)
    questions = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    prompts = []
    for question in questions:
        chat = chat_text(tokenizer, [{"role": "user", "content": question}])
        encoded = tokenizer(chat.text, add_special_tokens=chat.add_special_tokens)
        prompts.append(encoded["input_ids"])
    greedy = GenerationSettings(max_tokens=args.max_tokens, sampling_temperature=0.0)
    lines = [
        f"generation throughput: {TEACHER}, {len(prompts)} chat prompts "
        f"({min(map(len, prompts))}-{max(map(len, prompts))} tokens), greedy, "
        f"max_new_tokens {args.max_tokens}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, fp32 CPU",
        "",
        f"{'method':<28}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}{'x generate':>12}"
        f"{'same text':>11}",
    ]

    reference(model, tokenizer, prompts[:1], 4)  # warm-up
    start = time.perf_counter()
    ref_ids = reference(model, tokenizer, prompts, args.max_tokens)
    ref_seconds = time.perf_counter() - start
    ref_tokens = sum(len(ids) for ids in ref_ids)
    ref_texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in ref_ids]
    ref_rate = ref_tokens / ref_seconds
    lines.append(
        f"{'model.generate, batch 1':<28}{ref_seconds:>9.1f}{ref_tokens:>8}{ref_rate:>10.1f}"
        f"{1.0:>12.2f}{'-':>11}"
    )
    print(lines[-1], flush=True)

    notes = []
    for max_batch in [int(b) for b in args.batches.split(",")]:
        with Engine(model, tokenizer, max_batch=max_batch) as engine:
            engine.generate(prompts[:1], GenerationSettings(max_tokens=4, sampling_temperature=0))
            start = time.perf_counter()
            choices = engine.generate(prompts, greedy)
            seconds = time.perf_counter() - start
            tokens = sum(c.completion_tokens for c in choices)
            same = [c.text == r for c, r in zip(choices, ref_texts, strict=True)]
            lines.append(
                f"{f'engine, max_batch {max_batch}':<28}{seconds:>9.1f}{tokens:>8}"
                f"{tokens / seconds:>10.1f}{tokens / seconds / ref_rate:>12.2f}"
                f"{f'{sum(same)}/{len(same)}':>11}"
            )
            print(lines[-1], flush=True)
            if not all(same):  # the same batches again, untimed, for the token ids
                with_ids = GenerationSettings(
                    max_tokens=args.max_tokens, sampling_temperature=0.0, top_logprobs=0
                )
                again = engine.generate(prompts, with_ids)
                for i in (i for i, ok in enumerate(same) if not ok):
                    engine_ids = [t.token_id for t in again[i].tokens]
                    where = first_difference(model, tokenizer, prompts[i], ref_ids[i], engine_ids)
                    notes.append(f"  max_batch {max_batch}, prompt {i}: differs at {where}")
    lines.append("")
    if notes:
        lines.append("greedy outputs that differ from model.generate (first differing token):")
        lines += notes
    else:
        lines.append("every engine output equals model.generate's, text for text")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(notes) - 1 :] if notes else lines[-1:]))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
