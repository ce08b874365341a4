"""Peak memory and speed of `potstill distill` as the cached corpus grows tenfold.

    .venv/bin/python bench/scale.py [--tokens 1000000,10000000] [--steps 40]
        [--budgets 64,all] [--rounds 3] [--work runs/scale]

For each corpus size, real text (the shipped Shakespeare plays, copied as often as the
size needs: the copies are whole new documents) is tokenized with a byte-level BPE
tokenizer of 1,024 ids trained on it, and a small Llama teacher (width 64, 2 layers,
random weights: this measures the cache and the data, not a model) teaches the whole
corpus once (`teach.blocks=all`, top 16 per token, 128-token blocks); `teach` packs the
corpus into its run folder (``data/``) as it starts. Then `potstill distill` trains a
1-layer student for ``--steps`` steps from that cache (default `teach.cache_memory_mb`),
in a run folder given that packed corpus, as `distill` after `teach` finds it: its peak
resident memory (``VmHWM``: ``ru_maxrss`` would report the parent's, as Linux keeps it
across ``exec``) and its training tokens per second over its steps (from
``metrics.jsonl``, the first step left out). The sizes take turns, ``--rounds`` times,
so that both see the same load from other jobs; the largest peak and the median speed of
each are reported. Once per size `distill` also runs in a new run folder, where it packs
the corpus itself first. A short run touches few shards, so the whole cache is also
read, block by block in teaching order as training visits it, once per budget in
``--budgets`` (``all``: every decoded shard kept, as every cache was read before caches
streamed): the peak memory of that read. Each runs in its own process, one after
another, on one thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from potstill.cache.reader import decoded_bytes_per_token
from potstill.cache.store import read_manifest
from potstill.data.corpus import shakespeare_documents

# The process's own peak resident memory, in KB.
PEAK = """
status = open("/proc/self/status").read().splitlines()
print("PEAK_RSS_KB", next(l.split()[1] for l in status if l.startswith("VmHWM")), flush=True)
"""
CHILD = (
    """
import sys
from potstill import cli
sys.argv = ["potstill", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as e:
    if e.code:
        raise
"""
    + PEAK
)
# Every block of a cache, in teaching order, 8 at a time, as training would read them.
READ = (
    """
import sys, torch
from potstill.cache.reader import TeacherCache
budget = sys.argv[2]
cache = TeacherCache.load(__import__("pathlib").Path(sys.argv[1]), {}, **(
    {"resident": 10**9} if budget == "all" else {"memory_mb": float(budget)}))
plan = cache.manifest.plan
for start in range(0, len(plan), 8):
    cache.signal(torch.tensor(plan[start : start + 8]))
"""
    + PEAK
)


def build_teacher(folder: Path, texts: list[str]) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_corpus(path: Path, texts: list[str], tokenizer, tokens: int) -> int:
    """``texts`` in turn (copy ``c`` of a text tagged ``[c]``, a new document) as JSON
    lines until they hold ``tokens`` tokens; the count."""
    lengths = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False).input_ids]
    total = 0
    with path.open("w") as f:
        for turn in itertools.count():
            text, length = texts[turn % len(texts)], lengths[turn % len(texts)]
            f.write(json.dumps({"text": f"[{turn // len(texts)}] {text}"}) + "\n")
            total += length
            if total >= tokens:
                return total
    raise AssertionError("unreachable")


def recipe(work: Path, corpus: Path, teacher: Path, steps: int) -> dict:
    return {
        "name": "scale",
        "runs_dir": str(work / "runs"),
        "teacher": str(teacher),
        "device": "cpu",
        "student": {"from_teacher": {"layers": [0]}},
        "data": {"path": str(corpus), "block_size": 128, "heldout": 0.01},
        "loss": [{"loss": "forward_kl", "weight": 0.5}, {"loss": "cross_entropy", "weight": 0.5}],
        "train": {"steps": steps, "batch_size": 8, "warmup": 2, "threads": 1},
        "teach": {"top_k": 16, "samples": 0, "blocks": "all", "batch_size": 32},
    }


def run(code: str, *args: str) -> tuple[int, float]:
    """Python ``code`` with ``args`` in a fresh process: (its peak RSS in KB, seconds)."""
    begun = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - begun
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    return int(peak[-1].split()[1]), seconds


def tokens_per_second(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("model") == "student"]
    first, last = rows[0], rows[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1000000,10000000")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--budgets", default="64,all")
    parser.add_argument("--work", type=Path, default=Path("runs/scale"))
    parser.add_argument("--rounds", type=int, default=3, help="distill runs per size, in turns")
    args = parser.parse_args()
    texts = [text for _, text in shakespeare_documents()]
    rows = []
    for size in (int(t) for t in args.tokens.split(",")):
        work = args.work / f"{size}"
        shutil.rmtree(work / "runs", ignore_errors=True)  # every stage runs, none resumed
        work.mkdir(parents=True, exist_ok=True)
        teacher = work / "teacher"
        tokenizer = build_teacher(teacher, texts)
        corpus = work / "corpus.jsonl"
        total = write_corpus(corpus, texts, tokenizer, size)
        path = work / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(work, corpus, teacher, args.steps)))
        teach_peak, teach_seconds = run(CHILD, "teach", str(path))
        cache = work / "runs" / "scale" / "cache"
        manifest = read_manifest(cache)
        decoded_mb = manifest.tokens * decoded_bytes_per_token(manifest) / 2**20
        print(
            f"{total:,} tokens of text: cache {manifest.tokens:,} tokens in "
            f"{len(manifest.shards)} shards, {manifest.bytes / 2**20:.1f} MB on disk, "
            f"{decoded_mb:.0f} MB decoded; teach {teach_seconds:.0f} s, peak "
            f"{teach_peak / 2**10:.0f} MB",
            flush=True,
        )
        row = {
            "size": size,
            "text_tokens": total,
            "cache_tokens": manifest.tokens,
            "shards": len(manifest.shards),
            "cache_mb_disk": manifest.bytes / 2**20,
            "cache_mb_decoded": decoded_mb,
            "teach_seconds": teach_seconds,
            "teach_peak_rss_mb": teach_peak / 2**10,
        }
        for budget in args.budgets.split(","):
            peak, seconds = run(READ, str(cache), budget)
            row[f"read_all_{budget}_peak_rss_mb"] = peak / 2**10
            row[f"read_all_{budget}_seconds"] = seconds
            print(
                f"  every block read, cache budget {budget:>5}: peak {peak / 2**10:6.0f} MB, "
                f"{seconds:.0f} s",
                flush=True,
            )
        peak, seconds = run(CHILD, "distill", str(path), "name=fresh", f"teach.cache={cache}")
        row["distill_packing_peak_rss_mb"] = peak / 2**10
        row["distill_packing_seconds"] = seconds
        print(
            f"  distill in a new run folder, packing the corpus first: peak {peak / 2**10:.0f} MB"
        )
        rows.append(row)
    # Speed depends on what else the machine runs: the sizes take turns, round after round,
    # each in a run folder given the corpus its `teach` packed (as `distill` after `teach`
    # finds it), and each size's median over the rounds is reported.
    for turn in range(args.rounds):
        for row in rows:
            work = args.work / f"{row['size']}"
            folder = work / "runs" / f"turn{turn}"
            shutil.copytree(work / "runs" / "scale" / "data", folder / "data")
            cache = work / "runs" / "scale" / "cache"
            recipe_path = str(work / "recipe.yaml")
            peak, seconds = run(
                CHILD, "distill", recipe_path, f"name={folder.name}", f"teach.cache={cache}"
            )
            row.setdefault("distill_peak_rss_mb_turns", []).append(peak / 2**10)
            row.setdefault("distill_tokens_per_second_turns", []).append(tokens_per_second(folder))
            print(
                f"turn {turn}, {row['text_tokens']:,} tokens: distill peak {peak / 2**10:.0f} MB, "
                f"{row['distill_tokens_per_second_turns'][-1]:.0f} tokens/s",
                flush=True,
            )
    for row in rows:
        row["distill_peak_rss_mb"] = max(row["distill_peak_rss_mb_turns"])
        row["distill_tokens_per_second"] = statistics.median(row["distill_tokens_per_second_turns"])
    out = Path("bench/results/scale.json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
