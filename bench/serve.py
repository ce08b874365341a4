"""Benchmark `potstill serve` under concurrent clients: 8 OpenAI clients at once vs 1.

The server is what a user runs: ``potstill serve MODEL --port P`` as a subprocess on
127.0.0.1 (its own Python process, so the clients here do not share its GIL), ready once
``/v1/models`` answers. After one warm-up request, in one script run:

- ``C clients``: C threads, each with its own ``openai.OpenAI`` client (no retries, so a
  429 counts as an error), each sending R chat completions back to back; all start
  together.
- ``1 client``: the same C * R requests from one client, one after another: the
  reference.

Requests are chat completions of the questions ``bench/generate.py`` uses (repeated if
more are asked for), greedy (temperature 0), ``max_tokens`` M, not streamed. Wall time
runs from the clients' start to the last reply; a request's latency from sending it to
its parsed reply. Tokens are the ``usage.completion_tokens`` of the replies (the end
token counted). Percentiles are nearest-rank (of 32 latencies, p99 is the largest). An
error is any exception, a non-200 included. Then one streaming pass: time to the first
content chunk for 1 request alone, and for C requests sent at once.

The server gets torch's default thread count (one per core) unless ``--threads`` passes
``potstill serve --threads N``: on CPUs another job is busy on, threads that wait for each
other's cores run many times slower, and ``--threads 1`` is the fair setting there.
Output: a table, also written to ``bench/results/serve.txt``; exit status 1 if any
request failed.

    .venv/bin/python bench/serve.py [--clients 8] [--requests 4] [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import openai
import torch
from generate import QUESTIONS

from potstill.util.device import resolve_device

MODEL = "bundled:smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results" / "serve.txt"
POTSTILL = Path(sys.executable).with_name("potstill")
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 600


@dataclass
class Run:
    """The replies of one timed pass."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    texts: dict[int, str] = field(default_factory=dict)  # by question index
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    """``potstill serve`` on ``port``, returned once ``/v1/models`` answers."""
    command = [str(POTSTILL), "serve", args.model, "--port", str(port)]
    command += ["--max-batch", str(args.max_batch), "--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with opener.open(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    sys.exit(f"the server did not start; its log:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops it; killed if it lingers."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url,
        api_key="bench",
        max_retries=0,
        timeout=REQUEST_TIMEOUT_S,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def ask(api: openai.OpenAI, args: argparse.Namespace, index: int, run: Run) -> None:
    """One chat completion of question ``index``, recorded in ``run``."""
    question = QUESTIONS[index % len(QUESTIONS)]
    start = time.perf_counter()
    try:
        reply = api.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": question}],
            max_tokens=args.max_tokens,
            temperature=0,
        )
        assert reply.usage is not None, "the reply has no usage"
    except Exception as e:  # any failure, a non-200 included, is an error
        run.errors.append(f"{type(e).__name__}: {e}")
        return
    run.latencies.append(time.perf_counter() - start)
    run.tokens += reply.usage.completion_tokens
    run.texts[index] = reply.choices[0].message.content or ""


def timed(url: str, args: argparse.Namespace, clients: int, requests: int) -> Run:
    """``clients`` threads, each sending ``requests`` chat completions back to back; the
    client with number c asks questions c, c + clients, c + 2 * clients, …"""
    run = Run()
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def work(c: int) -> None:
        api = client(url)
        own = Run()
        barrier.wait()
        for r in range(requests):
            ask(api, args, c + r * clients, own)
        with lock:
            run.latencies += own.latencies
            run.tokens += own.tokens
            run.texts |= own.texts
            run.errors += own.errors

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - start
    return run


def first_token(url: str, args: argparse.Namespace, clients: int) -> Run:
    """``clients`` streamed requests sent at once: as latencies, the seconds to each one's
    first content chunk (the rest of the stream is read, untimed)."""
    run = Run()
    barrier = threading.Barrier(clients)

    def work(c: int) -> None:
        api = client(url)
        barrier.wait()
        start, first = time.perf_counter(), True
        try:
            stream = api.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": QUESTIONS[c % len(QUESTIONS)]}],
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
            )
            for chunk in stream:
                if first and chunk.choices and chunk.choices[0].delta.content:
                    run.latencies.append(time.perf_counter() - start)
                    first = False
        except Exception as e:
            run.errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return run


def nearest_rank(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile: the smallest value with p% at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def row(name: str, run: Run, requests: int) -> str:
    lat = run.latencies or [math.nan]
    p50, p90, p99 = (nearest_rank(lat, p) for p in (50, 90, 99))
    return (
        f"{name:<11}{requests:>9}{run.seconds:>9.1f}{len(run.latencies) / run.seconds:>8.2f}"
        f"{run.tokens:>8}{run.tokens / run.seconds:>10.1f}"
        f"{p50:>8.2f}{p90:>8.2f}{p99:>8.2f}{max(lat):>8.2f}{len(run.errors):>8}"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--device", default="auto", help="the server's --device")
    parser.add_argument(
        "--threads", type=int, default=0, help="the server's torch threads (0: torch's default)"
    )
    args = parser.parse_args()

    began = time.perf_counter()
    load_before = os.getloadavg()
    total = args.clients * args.requests
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        server_log = Path(tmp) / "server.log"
        server = start_server(args, port, server_log)
        try:
            warm = Run()
            ask(client(url), args, 0, warm)  # warm-up
            many = timed(url, args, args.clients, args.requests)
            print(row(f"{args.clients} clients", many, total), flush=True)
            one = timed(url, args, 1, total)
            print(row("1 client", one, total), flush=True)
            ttft_one = first_token(url, args, 1)
            ttft_many = first_token(url, args, args.clients)
        finally:
            stop_server(server)
            log_text = server_log.read_text(errors="replace")
    load_after = os.getloadavg()
    took = time.perf_counter() - began

    cpus = os.cpu_count() or 1
    threads = f"{args.threads or torch.get_num_threads()}"
    if args.threads:
        threads += f" (torch's default here: {torch.get_num_threads()})"
    shared = load_before[0] >= 0.5
    lines = [
        f"potstill serve under concurrent clients: {args.model}, {total} chat completions "
        f"(bench/generate.py's questions), greedy, max_tokens {args.max_tokens}, not streamed",
        f"date {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {cpu_model()}, "
        f"{cpus} CPUs, server torch threads {threads}, "
        f"{resolve_device(args.device).type} fp32, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"server: `potstill serve --max-batch {args.max_batch}` (max_queue 64) as a subprocess "
        f"on 127.0.0.1; clients: threads of this process, openai {openai.__version__}, "
        "no retries",
        f"load average (1 min) {load_before[0]:.2f} before the run, {load_after[0]:.2f} after: "
        + (
            f"the {cpus} CPUs were shared with another job during the run"
            if shared
            else "the CPUs were otherwise idle"
        ),
        f"command: python bench/serve.py {' '.join(sys.argv[1:])}",
        "",
        f"{'clients':<11}{'requests':>9}{'seconds':>9}{'req/s':>8}{'tokens':>8}{'tokens/s':>10}"
        f"{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}{'max s':>8}{'errors':>8}",
        row(f"{args.clients} clients", many, total),
        row("1 client", one, total),
        "",
    ]
    summary = len(lines)
    lines += [
        f"{args.clients} clients vs 1: {one.seconds / many.seconds:.2f}x the requests/s "
        f"(tokens/s {many.tokens / many.seconds:.1f} vs {one.tokens / one.seconds:.1f})",
        "latency: send to parsed reply, per request; percentiles nearest-rank",
    ]
    if ttft_one.latencies and ttft_many.latencies:
        lines.append(
            f"streamed, time to first content chunk: 1 request alone "
            f"{ttft_one.latencies[0]:.2f} s; {args.clients} sent at once "
            f"{min(ttft_many.latencies):.2f}-{max(ttft_many.latencies):.2f} s"
        )
    same = sum(many.texts.get(i) == text for i, text in one.texts.items())
    lines.append(f"greedy replies equal between the two passes: {same}/{len(one.texts)}")
    errors = warm.errors + many.errors + one.errors + ttft_one.errors + ttft_many.errors
    if errors:
        lines.append(f"{len(errors)} errors; the first: {errors[0]}")
    rejected = log_text.count(" 429 ")
    if rejected:
        lines.append(f"the server log shows {rejected} responses with status 429")
    lines.append(f"the whole script took {took:.0f} s (server start and model load included)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[summary:]))
    print(f"written to {RESULTS}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
