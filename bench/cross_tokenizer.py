"""Distillation across tokenizers on a real pair: two logit losses from one cache against
sequence-level distillation (the teacher's text, at equal time) and no distillation.

    .venv/bin/python bench/cross_tokenizer.py --steps 40 --seed 0 [--arms ce uld shared sequence]
    .venv/bin/python bench/cross_tokenizer.py --steps 40 --combine 0 1 2
    .venv/bin/python bench/cross_tokenizer.py --table --out bench/results/cross_tokenizer.json

Teacher: the bundled Qwen2.5-Coder-0.5B-Instruct (151,665-id tokenizer). Student: the
default run's student shape cut from the bundled SmolLM2-135M-Instruct (its layers
0, 1, 2, 27, 28, 29, 49,152-id tokenizer), on the default run's data (the shipped plays,
``data.block_size`` 128) cut by the *student's* tokenizer. Every arm trains the same
student start for ``--steps`` steps of the default's training settings:

- ``ce``: no distillation, cross-entropy on the plays.
- ``uld``: ULD + cross-entropy (weights 1 and 1) on the plays, from a top-``k`` cache the
  teacher taught across tokenizers (`potstill.cache.cross_teach`).
- ``shared``: the shared-token KL + cross-entropy (weights 1 and 1) from the same cache,
  its teacher ids read as the student ids of the same bytes (`potstill.losses.shared`).
- ``sequence``: sequence-level distillation: the teacher continues the opening 48 student
  tokens of each training block the schedule visits (as text; sampled at 0.7, 96 new
  tokens, 16 rows a batch, the engine of ``potstill generate``), and the student trains
  with cross-entropy on prompt + continuation. The teacher generates for as long as the
  ``uld`` arm's teacher pass and the ``uld`` arm's extra training time took together
  (``uld`` total wall − ``ce`` training wall), so both arms take the same total time.
  It needs the seed's ``ce`` and ``uld`` arms first.

Each seed has its own cache (the blocks its schedule visits) in ``--work``; each arm's
record (with its rollbacks) and its training's ``metrics-ARM.jsonl`` are kept there and
the record reused, so a killed run goes on where it stopped. ``--combine``
writes ``--out`` from the kept records: each arm's perplexity per seed and their mean, its
costs from the first seed it ran, and bits per character on the held-out text (the
teacher's measured in its own tokens).

Scored: each student's perplexity on the default's held-out split (next-token
cross-entropy over the student's tokens of held-out text, the report's scorer). Wall
times are measured on a box shared with other jobs and are noisy; the teacher's forward
tokens and FLOPs (2 × its parameters outside the input embeddings per token read or
written) say what each arm paid the teacher.
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
from potstill.data.vocab import shared_ids
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
    metrics: Path | None = None,
) -> tuple[torch.nn.Module, float]:
    """A fresh copy of the student start trained on ``blocks``; its training wall seconds.
    ``metrics`` keeps the training's ``metrics.jsonl`` (its losses, checks and rollbacks)."""
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
            metrics_path=metrics or Path(tmp) / "metrics.jsonl",
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


ARMS = {
    "ce": "no distillation: cross-entropy on the plays",
    "uld": "ULD + cross-entropy from a top-64 cache taught across tokenizers",
    "shared": "shared-token KL + cross-entropy from the same cache",
    "sequence": "sequence-level: cross-entropy on the teacher's continuations",
}
TERMS = {
    "ce": [LossTerm("cross_entropy")],
    "uld": [LossTerm("uld"), LossTerm("cross_entropy")],
    "shared": [LossTerm("shared_kl"), LossTerm("cross_entropy")],
    "sequence": [LossTerm("cross_entropy")],
}


def run_seed(args: argparse.Namespace, seed: int, arms: list[str]) -> dict[str, Any]:
    """Train ``arms`` for one seed; each arm's record is kept in the seed's work folder
    (a rerun reuses it), and the seed's records are returned."""
    recipe = load_recipe(
        None,
        [
            f"train.steps={args.steps}",
            f"train.seed={seed}",
            f"teach.top_k={args.top_k}",
            "teach.samples=0",
            "teach.batch_size=4",
        ],
    ).model_copy(update={"budget_minutes": None})
    work = args.work / f"seed{seed}-steps{args.steps}-k{args.top_k}"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    teacher, t_tok = load_causal_lm(TEACHER)
    base, s_tok = load_causal_lm(STUDENT_BASE)
    teacher.eval()
    data = load_data(recipe.data, s_tok)
    per_token = teacher_flops_per_token(teacher)
    cache, taught = teach_arm(recipe, teacher, t_tok, s_tok, data, work)
    mapping = shared_ids(t_tok, s_tok, cache.manifest.vocab_size)
    cache.read_ids_as(torch.from_numpy(mapping))  # shared_kl reads them; uld reads no ids
    records: dict[str, Any] = {}
    for arm in arms:
        path = work / f"arm-{arm}.json"
        if path.is_file():
            records[arm] = json.loads(path.read_text())
            continue
        record: dict[str, Any] = {"what": ARMS[arm], "teacher_seconds": 0.0, "teacher_tokens": 0}
        blocks, source = data.train, None
        if arm in ("uld", "shared"):
            source = cache
            record.update(
                teacher_seconds=taught["seconds"],
                teacher_tokens=taught["teacher_tokens"],
                teacher_tflops=taught["teacher_tokens"] * per_token / 1e12,
                aligned_share=taught["aligned"],
                cache_blocks=taught["blocks"],
                shared_teacher_ids=int((mapping >= 0).sum()),
            )
        if arm == "sequence":  # the teacher writes for as long as ULD's extra cost took
            for needed in ("ce", "uld"):
                if needed not in records:
                    raise SystemExit(f"the sequence arm times itself by the {needed} arm: run it")
            budget = taught["seconds"] + records["uld"]["train_seconds"]
            budget -= records["ce"]["train_seconds"]
            plan = list(dict.fromkeys(cache.manifest.plan))
            texts, generated = generate_arm(teacher, t_tok, s_tok, data, plan, budget, work)
            blocks = pack(tokenize_texts(s_tok, texts), recipe.data.block_size)
            gen_tokens = generated["prompt_tokens"] + generated["new_tokens"]
            record.update(
                teacher_seconds=generated["seconds"],
                teacher_tokens=gen_tokens,
                teacher_tflops=gen_tokens * per_token / 1e12,
                rows=generated["rows"],
                new_tokens=generated["new_tokens"],
                train_blocks=len(blocks),
            )
        metrics = work / f"metrics-{arm}.jsonl"
        metrics.unlink(missing_ok=True)
        model, record["train_seconds"] = train_arm(
            arm, base, blocks, TERMS[arm], recipe, data.heldout, source, metrics
        )
        record["rollbacks"] = sum(
            json.loads(line).get("event") == "rollback" for line in metrics.read_text().splitlines()
        )
        scores = score_models(
            {arm: model},
            data.heldout.input_ids,
            data.heldout.labels,
            teacher=None,
            batch_size=recipe.eval.batch_size,
        )
        record["perplexity"] = scores[arm].perplexity
        atomic_write_json(path, record)
        records[arm] = record
        print(f"seed {seed} {arm}: perplexity {record['perplexity']:.2f}", flush=True)
    start_path = work / "arm-start.json"
    if not start_path.is_file():
        scores = score_models(
            {"start": student_start(base)},
            data.heldout.input_ids,
            data.heldout.labels,
            teacher=None,
            batch_size=recipe.eval.batch_size,
        )
        atomic_write_json(start_path, {"perplexity": scores["start"].perplexity})
    records["start"] = json.loads(start_path.read_text())
    return records


def combine(args: argparse.Namespace) -> None:
    """The seeds' records as one result: every arm's perplexity per seed and their mean,
    its costs from the first seed, bits per character on the same held-out text."""
    recipe = load_recipe(None).model_copy(update={"budget_minutes": None})
    teacher, t_tok = load_causal_lm(TEACHER)
    _, s_tok = load_causal_lm(STUDENT_BASE)
    data = load_data(recipe.data, s_tok)
    texts, chars, scored = characters_scored(s_tok, data.heldout)
    seeds: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        folder = args.work / f"seed{seed}-steps{args.steps}-k{args.top_k}"
        seeds[seed] = {
            arm: json.loads((folder / f"arm-{arm}.json").read_text())
            for arm in (*ARMS, "start")
            if (folder / f"arm-{arm}.json").is_file()
        }
    arms: dict[str, Any] = {}
    for arm in (*ARMS, "start"):
        measured = {seed: seeds[seed][arm] for seed in args.seeds if arm in seeds[seed]}
        if not measured:
            continue
        first = measured[min(measured)]
        perplexities = {str(seed): r["perplexity"] for seed, r in measured.items()}
        mean = sum(perplexities.values()) / len(perplexities)
        arms[arm] = {
            **first,
            "what": ARMS.get(arm, "the student start, untrained"),
            "perplexity": mean,
            "perplexities": perplexities,
            "bits_per_char": math.log(mean) * scored / chars / math.log(2),
            "costs_from_seed": min(measured),
        }
    result = {
        "command": " ; ".join(
            [
                f"python bench/cross_tokenizer.py --steps {args.steps} --top-k {args.top_k} "
                f"--seed {seed} --arms {' '.join(a for a in ARMS if a in seeds[seed])}"
                for seed in args.seeds
            ]
            + [
                f"python bench/cross_tokenizer.py --steps {args.steps} --top-k {args.top_k} "
                f"--combine {' '.join(str(s) for s in args.seeds)} --out {args.out}"
            ]
        ),
        "out": str(args.out),
        "teacher": TEACHER,
        "student": f"{STUDENT_BASE} layers {STUDENT_LAYERS}",
        "steps": args.steps,
        "seeds": args.seeds,
        "heldout_tokens": data.heldout.num_tokens,
        "heldout_chars": chars,
        "teacher_bits_per_char": teacher_bits_per_char(teacher, t_tok, texts),
        "threads": torch.get_num_threads(),
        "note": (
            "perplexity: the mean over the seeds each arm ran; wall times and teacher tokens "
            "from the first of them, on 2 cores shared with other jobs"
        ),
        "arms": arms,
    }
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result) + "\n")
    print(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--work", type=Path, default=Path("runs/cross-tokenizer"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/cross_tokenizer.json"))
    parser.add_argument(
        "--combine",
        dest="seeds",
        nargs="+",
        type=int,
        help="write --out from these seeds' kept records (and the teacher's bits per "
        "character on the held-out text)",
    )
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --out")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
    elif args.seeds:
        combine(args)
    else:
        run_seed(args, args.seed, args.arms)


def markdown(result: dict) -> str:
    """The README's table: one row per arm, its perplexity per seed and their mean."""
    arms, seeds = result["arms"], [str(s) for s in result["seeds"]]
    lines = [
        "| arm | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean perplexity | bits per character | teacher time (s) | student training (s) "
        "| total (s) | teacher tokens | teacher TFLOP |",
        "|---|" + "---:|" * (len(seeds) + 7),
    ]
    for key, arm in arms.items():
        each = " | ".join(
            f"{arm['perplexities'][s]:.2f}" if s in arm["perplexities"] else "–" for s in seeds
        )
        cells = [f"{arm['perplexity']:.2f}", f"{arm['bits_per_char']:.3f}"]
        if key != "start":
            total = arm["teacher_seconds"] + arm["train_seconds"]
            cells += [
                f"{arm['teacher_seconds']:.0f}",
                f"{arm['train_seconds']:.0f}",
                f"{total:.0f}",
                f"{arm['teacher_tokens']:,}",
                f"{arm.get('teacher_tflops', 0.0):.1f}",
            ]
        else:
            cells += [""] * 5
        lines.append(f"| {arm['what']} | {each} | " + " | ".join(cells) + " |")
    teacher = result["teacher_bits_per_char"]
    blank = " |" * (len(seeds) + 6)
    lines.append(
        f"| the teacher, in its own tokens |{' – |' * len(seeds)} – | {teacher:.3f} |" + " |" * 5
    )
    del blank
    return "\n".join(lines)


if __name__ == "__main__":
    main()
