"""A tiny Llama with decisive weights, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from openai import OpenAI

from potstill.models.load import load_causal_lm
from potstill.serve import Engine, create_app
from potstill.serve.server import bind, url_of
from tests.conftest import make_llama, make_tokenizer
from tests.synth.test_label import CHAT_TEMPLATE

MODEL = "tiny"  # the name the test servers serve their model as


def make_decisive_llama(vocab_size: int) -> torch.nn.Module:
    """The conftest's tiny Llama with weights drawn ~12x larger: its greedy text varies
    and the best token leads the next by a clear margin (default-sized weights give
    near-uniform logits, where one token repeats and float noise could flip a tie)."""
    model = make_llama(vocab_size)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.25, generator=generator)
    return model


def _save(folder: Path, chat_template: str | None) -> Path:
    tokenizer = make_tokenizer()
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    make_decisive_llama(len(tokenizer)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory) -> Path:
    """An HF folder: the decisive tiny Llama, its tokenizer without a chat template."""
    return _save(tmp_path_factory.mktemp("serve_lm"), chat_template=None)


@pytest.fixture(scope="session")
def chat_lm_dir(tmp_path_factory) -> Path:
    """The same model, its tokenizer with a chat template."""
    return _save(tmp_path_factory.mktemp("serve_chat_lm"), chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread: the suite shares two cores (the worker thread uses it too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lm(lm_dir) -> tuple[Any, Any]:
    return load_causal_lm(str(lm_dir))


@pytest.fixture(scope="session")
def chat_lm(chat_lm_dir) -> tuple[Any, Any]:
    return load_causal_lm(str(chat_lm_dir))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run the ASGI ``app`` with uvicorn on 127.0.0.1 (a free port) in a background thread;
    yield the base URL (``http://127.0.0.1:PORT/v1``)."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock) + "/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@contextmanager
def running(engine: Engine, *, api_key: str | None = None) -> Iterator[str]:
    """Serve ``engine`` (`serving`); yield the base URL. The engine is closed at the end."""
    try:
        with serving(create_app(engine, MODEL, api_key=api_key)) as url:
            yield url
    finally:
        engine.close()


@pytest.fixture
def serve(lm) -> Iterator[tuple[OpenAI, Engine]]:
    """A started engine over the tiny model behind a real server, and an OpenAI client."""
    engine = Engine(*lm, max_batch=8, max_queue=8)
    engine.start()
    with running(engine) as url:
        yield OpenAI(base_url=url, api_key="unused", max_retries=0), engine


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST JSON (or raw bytes) with the standard library: ``(status, parsed body)``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_stream(url: str, body: dict) -> tuple[str, str]:
    """POST a streaming request: ``(content type, the raw event-stream text)``."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return response.headers["Content-Type"], response.read().decode()
