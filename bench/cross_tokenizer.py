"""Distillation across tokenizers on a real pair, at equal time: ULD from the cache against
sequence-level distillation (the teacher's text) and no distillation.

    .venv/bin/python bench/cross_tokenizer.py [--steps 60] [--top-k 64] [--seed 0]
        [--work runs/cross-tokenizer] [--out bench/results/cross_tokenizer.json]
    .venv/bin/python bench/cross_tokenizer.py --table --out bench/results/cross_tokenizer.json

Teacher: the bundled Qwen2.5-Coder-0.5B-Instruct (151,665-id tokenizer). Student: the
default run's student shape cut from the bundled SmolLM2-135M-Instruct (its layers
0, 1, 2, 27, 28, 29, 49,152-id tokenizer), on the default run's data (the shipped plays,
``data.block_size`` 128) cut by the *student's* tokenizer. Every arm trains the same
student start for ``--steps`` steps of the default's training settings:

- ``ce``: no distillation, cross-entropy on the plays.
- ``uld``: ULD + cross-entropy (weights 1 and 1) on the plays, from a top-``k`` cache the
  teacher taught across tokenizers (`potstill.cache.cross_teach`).
- ``sequence``: sequence-level distillation: the teacher continues the opening 48 student
  tokens of each training block the schedule visits (as text; sampled at 0.7, 96 new
  tokens, 16 rows a batch, the engine of ``potstill generate``), and the student trains
  with cross-entropy on prompt + continuation. The teacher generates for as long as the
  ``uld`` arm's teacher pass and the ``uld`` arm's extra training time took together
  (``uld`` total wall − ``ce`` training wall), so both arms take the same total time.

Scored: each student's perplexity on the default's held-out split (next-token
cross-entropy over the student's tokens of held-out text, the report's scorer). Wall
times are measured on a box shared with other jobs and are noisy; the teacher's forward
tokens and FLOPs (2 × its parameters outside the input embeddings per token read or
written) say what each arm paid the teacher. One seed.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from potstill.cache.cross_teach import cross_source, teach_across
from potstill.config import Recipe, load_recipe
from potstill.data import Blocks, load_data
from potstill.data.order import scheduled_blocks
from potstill.data.packing import pack, tokenize_texts
from potstill.generation import Engine, GenerationSettings
from potstill.losses import LossTerm
from potstill.models.load import load_causal_lm
from potstill.models.student import layer_subset
from potstill.pipeline.stages import heldout_check
from potstill.tasks.causal_lm import CausalLM, score_models
from potstill.train.loop import train
from potstill.util.io import atomic_write_json, atomic_write_text

TEACHER = "bundled:qwen2.5-coder-0.5b-instruct"
STUDENT_BASE = "bundled:smollm2-135m-instruct"
STUDENT_LAYERS = [0, 1, 2, 27, 28, 29]  # the default run's from_teacher student
PROMPT_TOKENS, NEW_TOKENS, GEN_BATCH, GEN_TEMPERATURE = 48, 96, 16, 0.7


def teacher_flops_per_token(teacher: torch.nn.Module) -> int:
    """2 × the parameters a token's forward pass multiplies by (the input embedding is a
    lookup; a tied output head is counted once, as the head)."""
    embedding = teacher.get_input_embeddings().weight
    head = teacher.get_output_embeddings().weight
    total = sum(p.numel() for p in teacher.parameters())
    tied = embedding.data_ptr() == head.data_ptr()
    return 2 * (total - (0 if tied else embedding.numel()))


def student_start(base: torch.nn.Module) -> torch.nn.Module:
    return layer_subset(base, STUDENT_LAYERS)


def train_arm(
    name: str,
    base: torch.nn.Module,
    blocks: Blocks,
    terms: list[LossTerm],
    recipe: Recipe,
    heldout: Blocks,
    source: Any = None,
) -> tuple[torch.nn.Module, float]:
    """A fresh copy of the student start trained on ``blocks``; its training wall seconds."""
    model = student_start(base)
    cfg = (
        recipe.train
        if source is not None
        else recipe.train.model_copy(update={"curriculum": "none"})
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            model,
            blocks,
            CausalLM(terms, chunk_tokens=cfg.chunk_tokens),
            cfg,
            teacher=source,
            name=name,
            checkpoint_dir=Path(tmp) / "ckpt",
            metrics_path=Path(tmp) / "metrics.jsonl",
            evaluate=heldout_check(heldout, cfg, recipe.eval.batch_size),
        )
    return model, result.seconds


def teach_arm(recipe: Recipe, teacher, t_tok, s_tok, data, work: Path) -> tuple[Any, dict]:
    """The cross-tokenizer cache of the blocks the schedule visits, and what it cost
    (measured the first time; a finished cache in ``work`` is reused with its record)."""
    cfg = recipe.train
    plan = scheduled_blocks(
        len(data.train),
        micro_batches=cfg.steps * cfg.grad_accum,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    plan = list(dict.fromkeys(plan))
    source = cross_source(
        TEACHER, t_tok, s_tok, data_fingerprint=data.fingerprint, block_size=recipe.data.block_size
    )
    record_path = work / "teach.json"
    started = time.perf_counter()
    cache = teach_across(
        teacher,
        t_tok,
        s_tok,
        data.train,
        directory=work / "cache",
        source=source,
        settings=recipe.teach,
        temperature=1.0,
        plan=plan,
        log=print,
    )
    seconds = time.perf_counter() - started
    if not record_path.is_file():
        texts = [s_tok.decode(data.train.input_ids[b].tolist()) for b in plan]
        teacher_tokens = sum(len(t_tok(text)["input_ids"]) for text in texts)
        signal = cache.signal(torch.tensor(plan))
        aligned = float((signal.logprobs.amax(-1) > -30).float().mean())
        atomic_write_json(
            record_path,
            {
                "seconds": seconds,
                "blocks": len(plan),
                "teacher_tokens": teacher_tokens,
                "aligned": aligned,
            },
        )
    return cache, json.loads(record_path.read_text())


def generate_arm(
    teacher, t_tok, s_tok, data, plan: list[int], budget: float, work: Path
) -> tuple[list[str], dict]:
    """The teacher's continuations of the blocks' openings, batch after batch in schedule
    order, until ``budget`` seconds are spent (kept in ``work``; reused when there)."""
    path = work / "generations.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        return kept["texts"], kept["record"]
    prompts = [s_tok.decode(data.train.input_ids[b, :PROMPT_TOKENS].tolist()) for b in plan]
    texts: list[str] = []
    read = written = 0
    started = time.perf_counter()
    with Engine(teacher, t_tok, max_batch=GEN_BATCH, max_queue=4 * GEN_BATCH) as engine:
        for start in range(0, len(prompts), GEN_BATCH):
            if time.perf_counter() - started >= budget:
                break
            batch = prompts[start : start + GEN_BATCH]
            ids = [engine.encode(p, add_special_tokens=False) for p in batch]
            settings = [
                GenerationSettings(NEW_TOKENS, GEN_TEMPERATURE, seed=start + i)
                for i in range(len(batch))
            ]
            choices = engine.generate_each(list(zip(ids, settings, strict=True)))
            for prompt, prompt_ids, choice in zip(batch, ids, choices, strict=True):
                texts.append(prompt + choice.text)
                read += len(prompt_ids)
                written += choice.completion_tokens
    seconds = time.perf_counter() - started
    record = {"seconds": seconds, "rows": len(texts), "prompt_tokens": read, "new_tokens": written}
    atomic_write_json(path, {"texts": texts, "record": record})
    return texts, record


def characters_scored(s_tok: Any, heldout: Blocks) -> tuple[list[str], int, int]:
    """The held-out blocks' texts, the characters the student predicts (each block's text
    after its first token) and the student positions scored."""
    texts, chars = [], 0
    for ids in heldout.input_ids.tolist():
        text = s_tok.decode(ids)
        texts.append(text)
        chars += len(text) - len(s_tok.decode(ids[:1]))
    scored = int((heldout.labels[:, 1:] != -100).sum())
    return texts, chars, scored


def teacher_bits_per_char(teacher: torch.nn.Module, t_tok: Any, texts: list[str]) -> float:
    """The teacher's bits per character on ``texts`` in its own tokens: its next-token
    log-loss summed after each text's first token, over the characters after it."""
    nll, chars = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            encoded = t_tok(text, return_offsets_mapping=True)
            ids = torch.tensor([encoded["input_ids"]])
            logits = teacher(input_ids=ids).logits[0, :-1].float()  # (M − 1, V)
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            chars += len(text) - encoded["offset_mapping"][0][1]
    return nll / chars / math.log(2)


def add_bits_per_char(out: Path) -> None:
    """Every arm's held-out perplexity as bits per character, and the teacher's on the
    same text in its own tokens, added to the result in ``out``."""
    result = json.loads(out.read_text())
    recipe = load_recipe(None).model_copy(update={"budget_minutes": None})
    teacher, t_tok = load_causal_lm(TEACHER)
    _, s_tok = load_causal_lm(STUDENT_BASE)
    data = load_data(recipe.data, s_tok)
    texts, chars, scored = characters_scored(s_tok, data.heldout)
    for arm in result["arms"].values():
        arm["bits_per_char"] = math.log(arm["perplexity"]) * scored / chars / math.log(2)
    result["teacher_bits_per_char"] = teacher_bits_per_char(teacher, t_tok, texts)
    result["heldout_chars"] = chars
    result["bits_per_char_command"] = f"python bench/cross_tokenizer.py --bits-per-char --out {out}"
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result) + "\n")
    print(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/cross-tokenizer"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/cross_tokenizer.json"))
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --out")
    parser.add_argument(
        "--bits-per-char",
        action="store_true",
        help="add bits per character to --out: the arms' from their perplexity, the teacher's "
        "measured on the same held-out text in its own tokens",
    )
    args = parser.parse_args()
    if args.bits_per_char:
        add_bits_per_char(args.out)
        return
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return
    recipe = load_recipe(
        None,
        [
            f"train.steps={args.steps}",
            f"train.seed={args.seed}",
            f"teach.top_k={args.top_k}",
            "teach.samples=0",
            "teach.batch_size=4",
            "loss=[{loss: uld, weight: 1.0}, {loss: cross_entropy, weight: 1.0}]",
        ],
    ).model_copy(update={"budget_minutes": None})
    work = args.work / f"seed{args.seed}-steps{args.steps}-k{args.top_k}"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    teacher, t_tok = load_causal_lm(TEACHER)
    base, s_tok = load_causal_lm(STUDENT_BASE)
    teacher.eval()
    data = load_data(recipe.data, s_tok)
    per_token = teacher_flops_per_token(teacher)

    cache, taught = teach_arm(recipe, teacher, t_tok, s_tok, data, work)
    ce_terms = [LossTerm("cross_entropy")]
    uld_terms = [LossTerm("uld"), LossTerm("cross_entropy")]
    models: dict[str, torch.nn.Module] = {}
    walls: dict[str, float] = {}
    models["ce"], walls["ce"] = train_arm("ce", base, data.train, ce_terms, recipe, data.heldout)
    models["uld"], walls["uld"] = train_arm(
        "uld", base, data.train, uld_terms, recipe, data.heldout, cache
    )
    uld_total = taught["seconds"] + walls["uld"]
    budget = uld_total - walls["ce"]  # the sequence arm trains as the ce arm does
    plan = list(dict.fromkeys(cache.manifest.plan))
    texts, generated = generate_arm(teacher, t_tok, s_tok, data, plan, budget, work)
    sequence_blocks = pack(tokenize_texts(s_tok, texts), recipe.data.block_size)
    models["sequence"], walls["sequence"] = train_arm(
        "sequence", base, sequence_blocks, ce_terms, recipe, data.heldout
    )
    models["start"] = student_start(base)
    scores = score_models(
        models,
        data.heldout.input_ids,
        data.heldout.labels,
        teacher=None,
        batch_size=recipe.eval.batch_size,
    )
    teach_tokens = taught["teacher_tokens"]
    gen_tokens = generated["prompt_tokens"] + generated["new_tokens"]
    rows = {
        "start": {"what": "the student start, untrained", "perplexity": scores["start"].perplexity},
        "ce": {
            "what": "no distillation: cross-entropy on the plays",
            "perplexity": scores["ce"].perplexity,
            "train_seconds": walls["ce"],
            "teacher_seconds": 0.0,
            "teacher_tokens": 0,
        },
        "uld": {
            "what": f"ULD + cross-entropy from a top-{args.top_k} cache taught across tokenizers",
            "perplexity": scores["uld"].perplexity,
            "train_seconds": walls["uld"],
            "teacher_seconds": taught["seconds"],
            "teacher_tokens": teach_tokens,
            "teacher_tflops": teach_tokens * per_token / 1e12,
            "aligned_share": taught["aligned"],
            "cache_blocks": taught["blocks"],
        },
        "sequence": {
            "what": "sequence-level: cross-entropy on the teacher's continuations",
            "perplexity": scores["sequence"].perplexity,
            "train_seconds": walls["sequence"],
            "teacher_seconds": generated["seconds"],
            "teacher_tokens": gen_tokens,
            "teacher_tflops": gen_tokens * per_token / 1e12,
            "rows": generated["rows"],
            "new_tokens": generated["new_tokens"],
            "train_blocks": len(sequence_blocks),
        },
    }
    result = {
        "command": (
            f"python bench/cross_tokenizer.py --steps {args.steps} --top-k {args.top_k} "
            f"--seed {args.seed}"
        ),
        "teacher": TEACHER,
        "student": f"{STUDENT_BASE} layers {STUDENT_LAYERS}",
        "steps": args.steps,
        "seed": args.seed,
        "heldout_tokens": data.heldout.num_tokens,
        "threads": torch.get_num_threads(),
        "note": "one seed; wall times measured on 2 cores shared with other jobs",
        "arms": rows,
    }
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result) + "\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    """The README's table: one row per arm (bits per character once measured)."""
    arms = result["arms"]
    bits = "teacher_bits_per_char" in result
    lines = [
        "| arm | held-out perplexity |"
        + (" bits per character |" if bits else "")
        + " teacher time (s) | student training (s) | total (s) | teacher tokens | teacher TFLOP |",
        "|---|---:|" + ("---:|" if bits else "") + "---:|---:|---:|---:|---:|",
    ]
    for key in ("ce", "uld", "sequence"):
        arm = arms[key]
        total = arm["teacher_seconds"] + arm["train_seconds"]
        per_char = f" {arm['bits_per_char']:.3f} |" if bits else ""
        lines.append(
            f"| {arm['what']} | {arm['perplexity']:.2f} |{per_char} {arm['teacher_seconds']:.0f} | "
            f"{arm['train_seconds']:.0f} | {total:.0f} | {arm['teacher_tokens']:,} | "
            f"{arm.get('teacher_tflops', 0.0):.1f} |"
        )
    start = arms["start"]
    per_char = f" {start['bits_per_char']:.3f} |" if bits else ""
    lines.append(
        f"| the student start, untrained | {start['perplexity']:.2f} |{per_char} | | | | | |"
    )
    if bits:
        teacher = result["teacher_bits_per_char"]
        lines.append(f"| the teacher, in its own tokens | – | {teacher:.3f} | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
