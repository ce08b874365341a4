"""Tiny, real models and data built in-process: the fast suite never touches a hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from potstill.util.distributed import exit_process

TEXT = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub.
"""


def leave_spawned() -> None:
    """End a process ``mp.spawn`` started, once its results are written, as the CLI ends a
    launched rank: leave the group and skip the interpreter's teardown, where gloo's
    threads sometimes abort a finished rank (`potstill.util.distributed.exit_process`)."""
    exit_process(0)


def make_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXT.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def make_llama(vocab_size: int, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    return LlamaForCausalLM(config)


def llama_folder(folder: Path, tokenizer, layers: int = 4) -> Path:
    """Save a tiny `make_llama` of ``tokenizer``'s vocabulary and the tokenizer in ``folder``."""
    make_llama(len(tokenizer), layers=layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """An HF folder holding a 4-layer Llama teacher and its tokenizer."""
    return llama_folder(tmp_path_factory.mktemp("teacher"), tiny_tokenizer)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "hamlet.txt"
    path.write_text(TEXT * 12)
    return path


@pytest.fixture
def optimizer_grads(monkeypatch) -> list[list[torch.Tensor]]:
    """Every AdamW step's gradients, in parameter order, recorded as the step is taken."""
    grads: list[list[torch.Tensor]] = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return grads


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    """``potstill ARGS`` in-process through the real entry point: (exit code, out, err)."""
    import sys

    from potstill import cli
    from potstill.util.log import set_verbose

    argv = sys.argv
    sys.argv = ["potstill", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
        set_verbose(False)  # main() turns logging on for the process
    out, err = capsys.readouterr()
    return code, out, err


def tiny_recipe(runs_dir, teacher_dir, corpus, *, steps: int = 3) -> dict:
    """A whole-pipeline recipe on the tiny teacher: runs in seconds, one thread."""
    return {
        "name": "tiny",
        "runs_dir": str(runs_dir),
        "teacher": str(teacher_dir),
        "device": "cpu",
        "student": {"from_teacher": {"layers": [0, 3]}},
        "data": {"path": str(corpus), "block_size": 16, "heldout": 0.1},
        "loss": [
            {"loss": "forward_kl", "weight": 0.5, "temperature": 2.0},
            {"loss": "cross_entropy", "weight": 0.5},
        ],
        # One thread: the suite shares two cores, where OpenMP threads spin against each other.
        "train": {"steps": steps, "batch_size": 2, "warmup": 1, "lr": 1.0e-3, "threads": 1},
        "eval": {"batch_size": 4, "generate_tokens": 2},
    }


@pytest.fixture
def one_thread():
    """One torch thread for the test: the suite shares two cores, where OpenMP threads
    spin against each other; the previous count is given back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released): for a rendezvous, or
    an address that refuses connections."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def count_label_scoring(monkeypatch) -> list[int]:
    """Count the teacher's label-scoring forwards (train or test texts, or the content-free
    inputs): the number of rows of each call, appended as they happen."""
    from potstill.synth import label as label_module

    calls: list[int] = []
    real = label_module._score_with_prefix_cache

    def counting(model, prompt, rows, batch_size):
        calls.append(len(rows))
        return real(model, prompt, rows, batch_size)

    monkeypatch.setattr(label_module, "_score_with_prefix_cache", counting)
    return calls
