"""A seeded SIGKILL survival test of the pipeline: kill it anywhere, rerun, get the same.

Run it (about 10 minutes on 2 CPU cores; no network, no GPU):

    .venv/bin/python bench/kill.py --seed 0 --out bench/results/kill.json

It builds a tiny random Llama teacher (SmolLM2-135M-Instruct's tokenizer and chat
template, `potstill.models.bundled`) and small real data (a Shakespeare play, the shipped
polarity sentences), runs each of ``potstill teach``, ``distill``, ``label``,
``generate`` and ``run`` once uninterrupted (the reference), then, in fresh run folders,
starts each verb again and SIGKILLs it (the whole process group) at a seeded moment
drawn uniformly between the measured import time and the reference's duration (or a
faster whole run's, seen on the way). A killed process is rerun (``distill`` and ``run``
with ``--resume``, the others with the same command), killed again up to ``--chain``
times, then run to the end. A process that finishes before its kill is not counted as a
kill.

Checked:

1. after EVERY kill, before the rerun, the run folder is scanned: every JSON, JSONL and
   YAML file parses, every safetensors file loads (and every ``optim.pt``, parquet table
   and PNG reads whole); leftover temporary files (``.NAME.*.tmp``, and the ``.NAME.old``
   an atomic folder swap moves aside) are allowed but must not be referenced by the
   cache manifest; every shard the manifest lists has the size
   and sha256 it says (a shard on disk but not yet listed is fine);
2. at the end, the final weights equal the reference's bitwise (``torch.equal`` on every
   tensor of ``student/model.safetensors``; for ``run`` also ``baseline/``);
3. the teacher cache verifies (`read_manifest`, `shard_problem` on every shard,
   ``TeacherCache.load(dir, {})``) and its decoded ids, log-probabilities and tail equal
   the reference's block by block; ``labels.parquet`` and ``generations.jsonl`` rows
   equal the reference's; ``report.json`` parses (and its perplexities and agreement
   equal the reference's).

Besides the random kills, two are placed on purpose (`targeted`, skipped with
``--no-targeted``), because random ones almost never land there: between the two renames
of an atomic checkpoint save, and right after a checkpoint with the last line of
``metrics.jsonl`` torn (a write cut short); each says what the rerun did.

It prints a table and writes the seed, the settings, every kill (verb, attempt, delay,
what existed at the kill, the scan), the targeted findings and per-verb and total
results to ``--out``. Exit code 1 when a weight, output or file check failed, a rerun
crashed, or a targeted kill found a potstill bug. ``--wait-while PATH`` waits before each
start while PATH exists (someone else is timing things on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VERBS = ("teach", "distill", "label", "generate", "run")
RESUMES = {"distill", "run"}  # continued with --resume; the others by the same command
NAME = "kill"  # the run name of every recipe: runs_dir/kill/
CHECKED = (".json", ".jsonl", ".yaml", ".yml", ".safetensors", ".pt", ".parquet", ".png")

# Small, fast, real settings: every verb runs several seconds after import on one thread.
SETTINGS: dict[str, Any] = {
    "teacher": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tokenizer": "bundled:smollm2-135m-instruct (49,152 tokens, chat template)",
        "seed": 0,
    },
    "corpus": {"play": "hamlet", "chars": 120_000},
    "lm": {
        "data": {"block_size": 128, "heldout": 0.05, "max_heldout_tokens": 2048},
        "student": {"from_teacher": {"layers": [0, 3]}},
        "teach": {"top_k": 16, "batch_size": 4, "shard_blocks": 4},
        "train": {
            "steps": 24,
            "batch_size": 4,
            "warmup": 4,
            "threads": 1,
            "checkpoint_every": 3,
            "log_every": 1,
        },
        "eval": {"batch_size": 8, "generate_tokens": 16},
    },
    "run_steps": 12,  # `run` trains the student and the baseline: fewer steps each
    "label": {
        "texts": "the 200 shipped Pang & Lee polarity sentences (gensim), as texts.jsonl",
        "max_train": 200,
        "shard_texts": 4,
        "batch_size": 2,
    },
    "generate": {"prompts": 40, "n": 2, "max_tokens": 32, "batch_size": 4, "shard_rows": 4},
}


# What the targeted kills found before potstill fixed it (the same checks now pass).
FOUND_EARLIER = [
    {
        "bug": "a checkpoint save SIGKILLed between atomic_dir's two renames left "
        "checkpoints/student missing (the previous checkpoint in checkpoints/.student.old, "
        "the new one in checkpoints/.student.*.tmp); `distill --resume` restarted at step 0 "
        "and the .tmp folder (the size of a checkpoint) stayed after the run finished",
        "where": "potstill.util.io.atomic_dir, potstill.train.loop.train (resume)",
        "found_at": "the tree of 13:35-14:20 UTC, 2026-12-01 (before 5c9bcb6)",
        "fixed_in": "5c9bcb6 (potstill.util.io.settle_dir, run before each save and resume)",
    },
    {
        "bug": "a torn last line of metrics.jsonl (an append cut short) made every "
        "`distill --resume` crash with json.decoder.JSONDecodeError in "
        "potstill.train.loop._truncate_metrics (traceback, exit 1)",
        "where": "potstill.train.loop._append_metrics / _truncate_metrics",
        "found_at": "the tree of 13:35-14:20 UTC, 2026-12-01 (before 5c9bcb6)",
        "fixed_in": "5c9bcb6 (potstill.train.loop.read_metrics skips a torn last line)",
    },
]


def potstill_version() -> dict[str, Any]:
    """The commit the test ran against, and whether src/ had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "src_changed": bool(git("status", "--porcelain", "src")),
    }


# --- setup -------------------------------------------------------------------------------


def build_teacher(folder: Path) -> Path:
    """A tiny random Llama with the bundled SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from potstill.models.bundled import converted_path, is_converted, pull

    name = "smollm2-135m-instruct"
    source = converted_path(name) if is_converted(name) else pull(name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert tokenizer.chat_template, "the bundled tokenizer has no chat template"
    cfg = SETTINGS["teacher"]
    torch.manual_seed(cfg["seed"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(work: Path) -> dict[str, Path]:
    """The corpus (a slice of a shipped Shakespeare play), the prompts for `generate` and
    the texts for `label` (the shipped polarity sentences)."""
    from potstill.data.corpus import polarity_sentences, shakespeare_documents

    cfg = SETTINGS["corpus"]
    docs = shakespeare_documents()
    chosen = [text for name, text in docs if cfg["play"] in name.lower()] or [docs[0][1]]
    text = chosen[0][: cfg["chars"]]
    corpus = work / "corpus.txt"
    corpus.write_text(text)
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 20]
    prompts = work / "prompts.jsonl"
    wanted = SETTINGS["generate"]["prompts"]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in lines[100 : 100 + wanted]))
    texts = work / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in polarity_sentences()))
    return {"corpus": corpus, "prompts": prompts, "texts": texts}


def write_recipes(work: Path, teacher: Path, data: dict[str, Path]) -> dict[str, Path]:
    """One recipe per verb (`teach` and `distill` share the LM recipe)."""
    import yaml

    lm = SETTINGS["lm"]
    base = {"name": NAME, "teacher": str(teacher), "device": "cpu", "budget_minutes": None}
    lm_recipe = {
        **base,
        "student": lm["student"],
        "data": {"path": str(data["corpus"]), **lm["data"]},
        "teach": lm["teach"],
        "train": lm["train"],
        "eval": {**lm["eval"], "baseline": True},
    }
    run_recipe = json.loads(json.dumps(lm_recipe))
    run_recipe["train"]["steps"] = SETTINGS["run_steps"]
    lab = SETTINGS["label"]
    label_recipe = {
        **base,
        "train": {"threads": 1},
        "task": {
            "kind": "classify",
            "labels": [
                {"name": "positive", "description": "the review likes the film"},
                {"name": "negative", "description": "the review dislikes the film"},
            ],
            "instruction": "Is this movie review positive or negative?",
            "train": str(data["texts"]),
            "max_train": lab["max_train"],
            "shard_texts": lab["shard_texts"],
            "batch_size": lab["batch_size"],
        },
    }
    gen = SETTINGS["generate"]
    generate_recipe = {
        **base,
        "train": {"threads": 1},
        "generate": {
            "prompts": str(data["prompts"]),
            "system": "Answer in one line.",
            "n": gen["n"],
            "max_tokens": gen["max_tokens"],
            "batch_size": gen["batch_size"],
            "shard_rows": gen["shard_rows"],
            "temperature": 0.7,
            "seed": 0,
        },
    }
    recipes = {
        "lm": lm_recipe,
        "run": run_recipe,
        "label": label_recipe,
        "generate": generate_recipe,
    }
    paths = {}
    for key, recipe in recipes.items():
        paths[key] = work / f"{key}.yaml"
        paths[key].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return {
        "teach": paths["lm"],
        "distill": paths["lm"],
        "label": paths["label"],
        "generate": paths["generate"],
        "run": paths["run"],
    }


# --- processes ---------------------------------------------------------------------------

# ``potstill ARGV`` that SIGKILLs itself at one rename of an atomic checkpoint save
# (`potstill.util.io.atomic_dir`): POTSTILL_KILL_AT=swap right after the old
# checkpoints/student was moved aside (before the new one is moved in), =saved right
# after the first checkpoint is in place (random kills almost never land there);
# =report kills nothing and prints the step of every checkpoint moved into place.
INSIDE = """import json
import os
import signal
import sys
from pathlib import Path

real, at = os.replace, os.environ["POTSTILL_KILL_AT"]


def replace(src, dst, *args, **kwargs):
    real(src, dst, *args, **kwargs)
    src, dst = Path(src), Path(dst)
    if dst.parent.name != "checkpoints":
        return
    if at == "report" and dst.name == "student":
        step = json.loads((dst / "state.json").read_text())["step"]
        how = "put back" if src.name.endswith(".old") else "saved"
        print(f"checkpoint {how} at step {step}", flush=True)
    elif dst.name == {"swap": ".student.old", "saved": "student"}.get(at):
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
from potstill import cli  # noqa: E402

sys.argv = ["potstill", *sys.argv[1:]]
cli.main()
"""


class Launcher:
    """Starts ``python -m potstill VERB RECIPE runs_dir=…`` in its own process group."""

    def __init__(self, logs: Path, wait_while: Path | None) -> None:
        self.logs = logs
        self.wait_while = wait_while
        self.count = 0
        self.held = 0.0  # seconds spent waiting while --wait-while's file existed
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def hold(self) -> None:
        started = time.perf_counter()
        while self.wait_while is not None and self.wait_while.exists():
            time.sleep(5)
        self.held += time.perf_counter() - started

    def start(self, argv: list[str], *, inside: str | None = None) -> tuple[subprocess.Popen, Path]:
        """Start ``potstill ARGV``; with ``inside``, through `INSIDE` killing itself at
        that rename."""
        self.hold()
        self.count += 1
        log = self.logs / f"{self.count:03d}-{argv[0]}{'-' + inside if inside else ''}.log"
        env, command = self.env, [sys.executable, "-m", "potstill", *argv]
        if inside is not None:
            wrapper = self.logs.parent / "kill_inside.py"
            wrapper.write_text(INSIDE)
            env, command = (
                {**env, "POTSTILL_KILL_AT": inside},
                [sys.executable, str(wrapper), *argv],
            )
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole
            )
        return process, log

    def run(
        self,
        argv: list[str],
        *,
        kill_after: float | None,
        timeout: float = 600,
        inside: str | None = None,
    ) -> dict[str, Any]:
        """Run ``argv``; SIGKILL it after ``kill_after`` seconds if it is still running."""
        process, log = self.start(argv, inside=inside)
        started = time.perf_counter()
        killed = False
        try:
            process.wait(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this launcher created
            process.wait()
            killed = kill_after is not None
        seconds = time.perf_counter() - started
        tail = log.read_text(errors="replace").strip().splitlines()[-6:]
        return {
            "killed": killed,
            "rc": process.returncode,
            "seconds": round(seconds, 2),
            "log": str(log),
            "tail": tail,
        }


def import_seconds(launcher: Launcher) -> float:
    """How long ``python`` takes to import what every verb imports before working."""
    launcher.hold()
    code = (
        "import potstill.cli, potstill.pipeline, potstill.pipeline.label, "
        "potstill.pipeline.generate, potstill.config"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=launcher.env, check=True)
    return time.perf_counter() - started


# --- the scan after a kill -----------------------------------------------------------------


def is_temporary(path: Path, root: Path) -> bool:
    """Inside or named as an atomic write's temporary (``.NAME.*.tmp``) or the old copy an
    atomic folder swap moves aside (``.NAME.old``)."""
    for part in path.relative_to(root).parts:
        if part.startswith(".") and (part.endswith(".tmp") or part.endswith(".old")):
            return True
    return False


def _check_file(path: Path) -> str | None:
    """Why ``path`` does not read as a whole file of its kind, or None."""
    suffix = path.suffix
    try:
        if suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".jsonl":
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                try:
                    json.loads(line)
                except ValueError as e:
                    return f"line {number} does not parse ({e})"
        elif suffix in (".yaml", ".yml"):
            import yaml

            yaml.safe_load(path.read_text())
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        elif suffix == ".pt":
            import torch

            torch.load(path, weights_only=True, map_location="cpu")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif suffix == ".png":
            data = path.read_bytes()
            if not (data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")):
                return "not a whole PNG"
        else:
            return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:160]}"
    return None


def scan(run_dir: Path) -> dict[str, Any]:
    """Check every file of a (killed) run folder; see the module docstring, point 3."""
    from potstill.cache.store import read_manifest, shard_problem

    checked, temporary, unchecked, problems = 0, [], 0, []
    if not run_dir.exists():
        return {"ok": True, "files": 0, "temporary": [], "unchecked": 0, "problems": []}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(run_dir))
        if is_temporary(path, run_dir):
            temporary.append(rel)
            continue
        if path.suffix not in CHECKED:
            unchecked += 1
            continue
        checked += 1
        problem = _check_file(path)
        if problem is not None:
            problems.append(f"{rel}: {problem}")
    for manifest_path in sorted(run_dir.rglob("manifest.json")):
        if is_temporary(manifest_path, run_dir):
            continue
        cache = manifest_path.parent
        rel = str(cache.relative_to(run_dir))
        try:
            manifest = read_manifest(cache)
        except Exception as e:
            problems.append(f"{rel}/manifest.json: read_manifest fails ({e})")
            continue
        if manifest is None:
            continue
        for shard in manifest.shards:
            for stored in shard.files():
                if stored.file.startswith(".") or stored.file.endswith(".tmp"):
                    problems.append(f"{rel}: the manifest references a temporary {stored.file}")
            problem = shard_problem(cache, shard)
            if problem is not None:
                problems.append(f"{rel}: manifest shard {problem}")
    return {
        "ok": not problems,
        "files": checked,
        "temporary": temporary,
        "unchecked": unchecked,
        "problems": problems,
    }


def what_exists(run_dir: Path) -> dict[str, Any]:
    """What a killed run left: cache shards, checkpoint steps, stage markers, rows."""
    from potstill.cache.store import read_manifest

    found: dict[str, Any] = {}
    if not run_dir.exists():
        return {"run_dir": False}
    cache = run_dir / "cache"
    try:
        manifest = read_manifest(cache) if (cache / "manifest.json").is_file() else None
    except Exception as e:
        found["cache"] = f"unreadable: {e}"
    else:
        if manifest is not None:
            found["cache_blocks"] = f"{len(manifest.covered)}/{len(manifest.plan)}"
            found["cache_shards"] = len(manifest.shards)
            found["cache_shard_files"] = len(list(cache.glob("shard-*.bin")))
    for name in ("student", "baseline"):
        state = run_dir / "checkpoints" / name / "state.json"
        if state.is_file():
            try:
                found[f"checkpoint_{name}_step"] = json.loads(state.read_text())["step"]
            except ValueError:
                found[f"checkpoint_{name}_step"] = "unreadable"
        if (run_dir / name / "model.safetensors").is_file():
            found[f"{name}_saved"] = True
    stages = run_dir / "stages"
    if stages.is_dir():
        found["stages_done"] = sorted(p.stem for p in stages.glob("*.json"))
    labels = run_dir / "labels.parquet"
    if labels.is_file():
        try:
            import pyarrow.parquet as pq

            found["labels_rows"] = pq.read_table(labels).num_rows
        except Exception:
            found["labels_rows"] = "unreadable"
    parts = run_dir / "generations.parts"
    if parts.is_dir():
        shards = sorted(parts.glob("shard-*.jsonl"))
        found["generation_shards"] = len(shards)
        found["generation_rows_in_shards"] = sum(len(s.read_text().splitlines()) for s in shards)
    if (run_dir / "generations.jsonl").is_file():
        found["generations_file"] = True
    if (run_dir / "report.json").is_file():
        found["report"] = True
    return found


# --- comparing the final outputs with the reference -------------------------------------------


def compare_weights(folder: Path, reference: Path) -> tuple[bool, list[str]]:
    import torch
    from safetensors.torch import load_file

    path, ref_path = folder / "model.safetensors", reference / "model.safetensors"
    if not path.is_file():
        return False, [f"{path} is missing"]
    got, want = load_file(str(path)), load_file(str(ref_path))
    diffs = []
    if set(got) != set(want):
        diffs.append(f"{folder.name}: tensor names differ ({sorted(set(got) ^ set(want))[:4]})")
    for key in sorted(set(got) & set(want)):
        if got[key].dtype != want[key].dtype or not torch.equal(got[key], want[key]):
            delta = (got[key].double() - want[key].double()).abs().max().item()
            diffs.append(f"{folder.name}/{key}: differs (max |delta| {delta:.3g})")
    return not diffs, diffs


def verify_cache(cache: Path) -> tuple[Any, list[str]]:
    """The loaded cache and what is wrong with it (`read_manifest`, every shard,
    ``TeacherCache.load``)."""
    from potstill.cache.reader import TeacherCache
    from potstill.cache.store import read_manifest, shard_problem

    problems = []
    manifest = read_manifest(cache)
    if manifest is None:
        return None, [f"{cache}: no manifest"]
    for shard in manifest.shards:
        problem = shard_problem(cache, shard)
        if problem is not None:
            problems.append(problem)
    try:
        loaded = TeacherCache.load(cache, {})
    except Exception as e:
        return None, [*problems, f"TeacherCache.load: {e}"]
    return loaded, problems


def compare_cache(cache: Path, reference: Path) -> tuple[bool, list[str]]:
    import torch

    got, problems = verify_cache(cache)
    want, ref_problems = verify_cache(reference)
    if want is None or ref_problems:
        return False, [f"reference cache: {ref_problems}"]
    if got is None:
        return False, problems
    diffs = list(problems)
    plan, ref_plan = got.manifest.plan, want.manifest.plan
    if sorted(plan) != sorted(ref_plan):
        diffs.append("the cache plans other blocks than the reference's")
    for block in ref_plan:
        index = torch.tensor([block])
        try:
            a, b = got.signal(index), want.signal(index)
        except Exception as e:
            diffs.append(f"block {block}: {e}")
            continue
        for field in ("ids", "logprobs", "tail_logprob"):
            if not torch.equal(getattr(a, field), getattr(b, field)):
                diffs.append(f"block {block}: {field} differs")
    return not diffs, diffs


def compare_labels(run_dir: Path, reference: Path) -> tuple[bool, list[str]]:
    import numpy as np

    from potstill.synth.store import read_labels

    try:
        got = read_labels(run_dir / "labels.parquet")
    except Exception as e:
        return False, [f"labels.parquet: {e}"]
    want = read_labels(reference / "labels.parquet")
    diffs = []
    for field in ("label_names", "text_ids", "text_sha256", "truncated_rows", "labels"):
        if getattr(got, field) != getattr(want, field):
            diffs.append(f"labels.parquet: {field} differs")
    if got.probs.shape != want.probs.shape or not np.array_equal(got.probs, want.probs):
        diffs.append("labels.parquet: probs differ")
    if not np.array_equal(got.prior, want.prior):
        diffs.append("labels.parquet: prior differs")
    return not diffs, diffs


def compare_generations(run_dir: Path, reference: Path) -> tuple[bool, list[str]]:
    from potstill.synth.generations import read_generations

    try:
        got = read_generations(run_dir / "generations.jsonl")
    except Exception as e:
        return False, [f"generations.jsonl: {e}"]
    want = read_generations(reference / "generations.jsonl")
    diffs = []
    if len(got) != len(want):
        diffs.append(f"generations.jsonl: {len(got)} rows, the reference {len(want)}")
    for number, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
            diffs.append(f"generations.jsonl row {number}: {keys} differ")
    counts = json.loads((run_dir / "generations.manifest.json").read_text())["counts"]
    ref_counts = json.loads((reference / "generations.manifest.json").read_text())["counts"]
    if counts["rows"] != ref_counts["rows"]:
        diffs.append(f"generations.manifest.json: {counts['rows']} rows, not {ref_counts['rows']}")
    if (run_dir / "generations.parts").exists():
        diffs.append("generations.parts/ is left after the finished run")
    return not diffs, diffs


def report_numbers(run_dir: Path) -> dict[str, Any]:
    """The deterministic numbers of report.json: each model's perplexity and agreement."""
    from potstill.evaluation.report.schema import Report

    report = Report.load(run_dir / "report.json")
    numbers = {}
    for name, entry in report.models.items():
        agreement = entry.agreement.model_dump() if entry.agreement is not None else None
        numbers[name] = {"perplexity": entry.perplexity, "agreement": agreement}
    return numbers


def compare_report(run_dir: Path, reference: Path) -> tuple[bool, list[str]]:
    try:
        json.loads((run_dir / "report.json").read_text())
        got = report_numbers(run_dir)
    except Exception as e:
        return False, [f"report.json: {e}"]
    want = report_numbers(reference)
    if got != want:
        return False, [f"report.json numbers differ: {got} vs {want}"]
    return True, []


def verify(verb: str, run_dir: Path, reference: Path) -> dict[str, Any]:
    """Compare a finished run folder with the reference's."""
    result: dict[str, Any] = {"weights_equal": None, "outputs_equal": True, "mismatches": []}
    final = scan(run_dir)
    result["files_verified"] = final["ok"]
    result["final_scan"] = final
    mismatches = result["mismatches"]
    if verb in ("distill", "run"):
        equal = True
        for name in ("student", "baseline") if verb == "run" else ("student",):
            same, diffs = compare_weights(run_dir / name, reference / name)
            equal &= same
            mismatches += diffs
        result["weights_equal"] = equal
    checks = []
    if verb in ("teach", "run"):
        checks.append(compare_cache(run_dir / "cache", reference / "cache"))
    if verb == "label":
        checks.append(compare_labels(run_dir, reference))
    if verb == "generate":
        checks.append(compare_generations(run_dir, reference))
    if verb == "run":
        checks.append(compare_report(run_dir, reference))
    for same, diffs in checks:
        result["outputs_equal"] &= same
        mismatches += diffs
    return result


# --- the test ------------------------------------------------------------------------------


def argv_for(verb: str, recipe: Path, runs_dir: Path, *, rerun: bool) -> list[str]:
    argv = [verb, str(recipe), f"runs_dir={runs_dir}"]
    if rerun and verb in RESUMES:
        argv.append("--resume")
    return argv


def prepare(verb: str, runs_dir: Path, references: dict[str, Path]) -> None:
    """A fresh runs folder; `distill` starts from the reference's finished cache."""
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(parents=True)
    if verb == "distill":
        shutil.copytree(references["teach"] / "cache", runs_dir / NAME / "cache")


def run_reference(verb, recipes, work, references, launcher) -> dict[str, Any]:
    runs_dir = work / "reference" / verb
    prepare(verb, runs_dir, references)
    outcome = launcher.run(
        argv_for(verb, recipes[verb], runs_dir, rerun=False), kill_after=None, timeout=600
    )
    if outcome["rc"] != 0:
        raise SystemExit(f"the reference {verb} failed ({outcome['log']}): {outcome['tail']}")
    references[verb] = runs_dir / NAME
    return outcome


def _step(folder: Path) -> int | None:
    state = folder / "state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else None


def _saved_steps(log: str) -> list[int]:
    """The steps of the checkpoints a ``POTSTILL_KILL_AT=report`` run saved, in order."""
    import re

    text = Path(log).read_text(errors="replace")
    return [int(n) for n in re.findall(r"checkpoint saved at step (\d+)", text)]


def _swap_what(lost: bool, previous: int, first: int | None, checked: dict[str, Any]) -> str:
    if lost:
        what = (
            f"the rerun with --resume starts again at step 0 (its first checkpoint is step "
            f"{first}): the previous checkpoint (step {previous}) sits unused in "
            "checkpoints/.student.old (checkpoint.py says a run killed mid-save keeps its "
            "previous checkpoint)"
        )
    else:
        what = f"the rerun resumed from the previous checkpoint (its first is step {first})"
    leftovers = [p for p in checked["final_scan"]["temporary"] if p.startswith("checkpoints/")]
    if leftovers:
        folders = sorted({p.split("/")[1] for p in leftovers})
        what += f"; the killed save's {', '.join(folders)} stays after the run finishes"
    same = "equal" if checked["weights_equal"] else "DO NOT equal"
    return f"{what}; the final weights {same} the reference's"


def targeted(work: Path, recipes: dict[str, Path], references, launcher) -> list[dict[str, Any]]:
    """Two kills placed on purpose (`INSIDE`), beside the random ones: between the two
    renames of a checkpoint save, and right after a checkpoint with a torn last line of
    metrics.jsonl (a write cut short: a full disk, a crash, a kill between the pages of
    one write). Each says what the rerun did and whether that is a potstill bug."""
    findings = []
    recipe = recipes["distill"]

    runs_dir = work / "targeted" / "swap"
    prepare("distill", runs_dir, references)
    run_dir, checkpoints = runs_dir / NAME, runs_dir / NAME / "checkpoints"
    killed = launcher.run(
        argv_for("distill", recipe, runs_dir, rerun=False), kill_after=None, inside="swap"
    )
    folders = sorted(p for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.is_dir() else []
    left = {str(p.relative_to(run_dir)): _step(p) for p in folders}
    after_kill = scan(run_dir)
    rerun = launcher.run(
        argv_for("distill", recipe, runs_dir, rerun=True), kill_after=None, inside="report"
    )
    checked = verify("distill", run_dir, references["distill"])
    previous = min(step for step in left.values() if step)  # the checkpoint moved aside
    saves = _saved_steps(rerun["log"])
    first = saves[0] if saves else None
    lost = first is None or first <= previous  # redid steps it had a checkpoint of
    findings.append(
        {
            "check": "SIGKILL between the two renames of atomic_dir while saving a checkpoint",
            "where": "potstill.util.io.atomic_dir (used by potstill.train.checkpoint."
            "save_checkpoint): os.replace(path, .NAME.old), then os.replace(tmp, path)",
            "how": "distill run through INSIDE with POTSTILL_KILL_AT=swap: SIGKILL right "
            "after os.replace(checkpoints/student, checkpoints/.student.old) at the second "
            "checkpoint (step 6); then `potstill distill RECIPE --resume` (through INSIDE "
            "with POTSTILL_KILL_AT=report: the steps of the checkpoints it saves)",
            "killed": killed["rc"] == -signal.SIGKILL,
            "checkpoint_folders_after_kill": left,
            "scan_after_kill": after_kill,
            "rerun_checkpoints_saved_at": saves,
            "rerun_rc": rerun["rc"],
            "final_weights_equal": checked["weights_equal"],
            "leftovers_after_finish": checked["final_scan"]["temporary"],
            "bug": lost,
            "what": _swap_what(lost, previous, first, checked),
        }
    )
    if not checked["weights_equal"]:
        findings[-1]["mismatches"] = checked["mismatches"]

    runs_dir = work / "targeted" / "torn"
    prepare("distill", runs_dir, references)
    run_dir = runs_dir / NAME
    killed = launcher.run(
        argv_for("distill", recipe, runs_dir, rerun=False), kill_after=None, inside="saved"
    )
    at_kill = _step(run_dir / "checkpoints" / "student")
    metrics = run_dir / "metrics.jsonl"
    rows = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    with open(metrics, "a") as f:
        f.write('{"model": "student", "step": 4, "lo')  # a row cut short
    rerun = launcher.run(argv_for("distill", recipe, runs_dir, rerun=True), kill_after=None)
    again = rerun
    if rerun["rc"] != 0:  # does it stay stuck?
        again = launcher.run(argv_for("distill", recipe, runs_dir, rerun=True), kill_after=None)
    text = Path(rerun["log"]).read_text(errors="replace")
    traceback = "Traceback" in text and "JSONDecodeError" in text
    checked = verify("distill", run_dir, references["distill"])
    if rerun["rc"] != 0 and traceback:
        what = (
            f"the rerun crashes with a traceback (json.decoder.JSONDecodeError in "
            f"_truncate_metrics), exit {rerun['rc']}, and so does the next one (exit "
            f"{again['rc']}) until the line is removed by hand: metrics.jsonl is appended "
            "in place, not atomically, and read back without tolerating a torn last line"
        )
    elif rerun["rc"] != 0:
        what = f"the rerun exits {rerun['rc']}: {rerun['tail'][-1:]}"
    else:
        same = "equal" if checked["weights_equal"] else "DO NOT equal"
        what = f"the rerun finishes (exit 0); the final weights {same} the reference's"
    findings.append(
        {
            "check": "rerun --resume after a kill that left a torn last line in metrics.jsonl",
            "where": "potstill.train.loop._append_metrics (a plain append) and "
            "_truncate_metrics (reads every line back at resume)",
            "how": "distill killed right after its first checkpoint (step 3); then "
            '\'{"model": "student", "step": 4, "lo\' appended to metrics.jsonl (no '
            "newline); then `potstill distill RECIPE --resume` (again if it fails)",
            "killed": killed["rc"] == -signal.SIGKILL,
            "checkpoint_step": at_kill,
            "metrics_rows_before_tear": rows,
            "rerun_rc": [rerun["rc"], again["rc"]] if again is not rerun else [rerun["rc"]],
            "rerun_last_lines": rerun["tail"][-2:],
            "final_weights_equal": checked["weights_equal"],
            "bug": rerun["rc"] != 0 or not checked["weights_equal"],
            "what": what,
        }
    )
    for finding in findings:
        mark = "BUG" if finding["bug"] else "ok"
        print(f"  targeted: {finding['check']}: {mark}: {finding['what']}", flush=True)
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/kill.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kill/work"))
    parser.add_argument("--kills", type=int, default=5, help="kills to land per verb")
    parser.add_argument("--chain", type=int, default=2, help="kills at most per attempt")
    parser.add_argument("--max-attempts", type=int, default=10, help="attempts at most per verb")
    parser.add_argument("--verbs", default=",".join(VERBS))
    parser.add_argument("--keep", action="store_true", help="keep the attempts' run folders")
    parser.add_argument(
        "--no-targeted",
        dest="targeted",
        action="store_false",
        help="skip the two kills placed on purpose (`targeted`)",
    )
    parser.add_argument(
        "--wait-while", type=Path, default=None, help="wait before each start while PATH exists"
    )
    args = parser.parse_args()
    verbs = [v for v in args.verbs.split(",") if v]
    rng = random.Random(args.seed)
    started = time.perf_counter()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    logs = args.work / "logs"
    logs.mkdir()
    launcher = Launcher(logs, args.wait_while)
    launcher.hold()
    teacher = build_teacher(args.work / "teacher")
    recipes = write_recipes(args.work, teacher, write_data(args.work))
    imported = import_seconds(launcher)
    print(f"import: {imported:.1f} s; recipes in {args.work}", flush=True)

    references: dict[str, Path] = {}
    reference_seconds: dict[str, float] = {}
    needed = list(dict.fromkeys(["teach", *verbs] if "distill" in verbs else verbs))
    for verb in needed:
        outcome = run_reference(verb, recipes, args.work, references, launcher)
        reference_seconds[verb] = outcome["seconds"]
        print(f"reference {verb:<8} {outcome['seconds']:6.1f} s", flush=True)

    kills: list[dict[str, Any]] = []
    not_killed: list[dict[str, Any]] = []
    per_verb: dict[str, dict[str, Any]] = {}
    for verb in verbs:
        summary = per_verb[verb] = {
            "reference_seconds": reference_seconds[verb],
            "kills": 0,
            "kills_survived": 0,
            "attempts": 0,
            "reruns": 0,
            "reruns_failed": 0,
            "weights_bitwise_equal": None if verb not in ("distill", "run") else True,
            "outputs_equal": True,
            "files_verified": True,
            "corrupt_files": 0,
            "mismatches": [],
        }
        low, high = imported, max(reference_seconds[verb], imported + 1.0)
        while summary["kills"] < args.kills and summary["attempts"] < args.max_attempts:
            summary["attempts"] += 1
            attempt = summary["attempts"]
            runs_dir = args.work / "attempts" / f"{verb}-{attempt}"
            prepare(verb, runs_dir, references)
            run_dir = runs_dir / NAME
            survived = True
            finished = False
            for invocation in range(args.chain):
                if summary["kills"] >= args.kills:
                    break
                delay = round(rng.uniform(low, high), 2)
                argv = argv_for(verb, recipes[verb], runs_dir, rerun=invocation > 0)
                summary["reruns"] += invocation > 0
                outcome = launcher.run(argv, kill_after=delay, timeout=600)
                if not outcome["killed"]:
                    if invocation == 0 and outcome["rc"] == 0:  # a whole run, faster than
                        high = max(min(high, outcome["seconds"]), low + 1.0)  # the reference
                    record = {"verb": verb, "attempt": attempt, "invocation": invocation}
                    not_killed.append({**record, "delay_s": delay, **outcome})
                    finished = True
                    if outcome["rc"] != 0:
                        survived = False
                        summary["reruns_failed"] += 1
                        summary["mismatches"].append(f"attempt {attempt}: exit {outcome['rc']}")
                    break
                summary["kills"] += 1
                result = scan(run_dir)
                kill = {
                    "verb": verb,
                    "attempt": attempt,
                    "invocation": invocation,
                    "argv": argv,
                    "delay_s": delay,
                    "at_kill": what_exists(run_dir),
                    "scan": result,
                }
                kills.append(kill)
                if not result["ok"]:
                    survived = False
                    summary["files_verified"] = False
                    summary["corrupt_files"] += len(result["problems"])
                    summary["mismatches"] += [f"after kill: {p}" for p in result["problems"]]
                print(
                    f"  kill {verb:<8} #{attempt}.{invocation} at {delay:5.1f} s: "
                    f"{json.dumps(kill['at_kill'])[:110]} scan {'ok' if result['ok'] else 'BAD'}",
                    flush=True,
                )
            if not finished:  # the last invocation was killed: rerun it to the end
                summary["reruns"] += 1
                argv = argv_for(verb, recipes[verb], runs_dir, rerun=True)
                outcome = launcher.run(argv, kill_after=None, timeout=600)
                if outcome["rc"] != 0:
                    survived = False
                    summary["reruns_failed"] += 1
                    summary["mismatches"].append(
                        f"attempt {attempt}: the rerun exited {outcome['rc']}: {outcome['tail']}"
                    )
            checked = verify(verb, run_dir, references[verb])
            if checked["weights_equal"] is False:
                summary["weights_bitwise_equal"] = False
            if not checked["outputs_equal"]:
                summary["outputs_equal"] = False
            if not checked["files_verified"]:
                summary["files_verified"] = False
                summary["corrupt_files"] += len(checked["final_scan"]["problems"])
            summary["mismatches"] += [f"attempt {attempt}: {m}" for m in checked["mismatches"]]
            survived &= not checked["mismatches"] and checked["files_verified"]
            landed = sum(1 for k in kills if k["verb"] == verb and k["attempt"] == attempt)
            summary["kills_survived"] += landed if survived else 0
            verdict = (
                "same as the reference" if survived else f"DIFFERS: {summary['mismatches'][-3:]}"
            )
            print(f"  {verb:<8} attempt {attempt}: {landed} kill(s), {verdict}", flush=True)
            if not args.keep:
                shutil.rmtree(runs_dir, ignore_errors=True)

    findings = []
    if "distill" in verbs and args.targeted:
        findings = targeted(args.work, recipes, references, launcher)

    totals = {
        "kills": len(kills),
        "kills_survived": sum(v["kills_survived"] for v in per_verb.values()),
        "mismatched_weights": sum(v["weights_bitwise_equal"] is False for v in per_verb.values()),
        "mismatched_outputs": sum(not v["outputs_equal"] for v in per_verb.values()),
        "corrupt_files": sum(v["corrupt_files"] for v in per_verb.values()),
        "reruns_failed": sum(v["reruns_failed"] for v in per_verb.values()),
        "finished_before_kill": len(not_killed),
        "potstill_bugs": sum(f["bug"] for f in findings),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "held_seconds": round(launcher.held, 1),
    }
    print()
    print(f"{'verb':<9}{'kills':>6}{'survived':>9}{'reruns':>7}", end="")
    print(f"{'weights':>9}{'outputs':>9}{'files':>7}")
    for verb, v in per_verb.items():
        weights = {None: "-", True: "equal", False: "DIFFER"}[v["weights_bitwise_equal"]]
        print(
            f"{verb:<9}{v['kills']:>6}{v['kills_survived']:>9}{v['reruns']:>7}{weights:>9}"
            f"{'equal' if v['outputs_equal'] else 'DIFFER':>9}"
            f"{'ok' if v['files_verified'] else 'BAD':>7}"
        )
    print(
        f"total: {totals['kills']} kills, {totals['mismatched_weights']} mismatched weights, "
        f"{totals['corrupt_files']} corrupt files, {totals['reruns_failed']} failed reruns, "
        f"{totals['potstill_bugs']} potstill bugs (targeted), "
        f"{totals['wall_seconds']:.0f} s ({totals['held_seconds']:.0f} s of it held)"
    )
    result = {
        "seed": args.seed,
        "potstill": potstill_version(),
        "settings": {
            **SETTINGS,
            "kills_per_verb": args.kills,
            "chain": args.chain,
            "max_attempts": args.max_attempts,
            "delay": "uniform(import seconds, the verb's reference seconds), seeded; the upper "
            "bound drops to a whole fresh run that finished before its kill (the machine "
            "is shared: a reference can run slow)",
            "import_seconds": round(imported, 2),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "reference_seconds": reference_seconds,
        "kills": kills,
        "finished_before_kill": not_killed,
        "verbs": per_verb,
        "targeted": findings,
        "found_earlier": FOUND_EARLIER,
        "totals": totals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    bad = totals["mismatched_weights"] + totals["mismatched_outputs"] + totals["corrupt_files"]
    return 1 if bad or totals["reruns_failed"] or totals["potstill_bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
