"""`potstill serve` end to end: the real command in a subprocess (warning off loopback,
API key required and never printed, Ctrl-C stops it cleanly), and user errors as one
line with exit code 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import openai
import pytest
from openai import OpenAI

from tests.conftest import run_cli

KEY = "sk-potstill-cli-5d2f8b"


def test_a_missing_model_is_one_line_and_exit_2(tmp_path, capsys):
    code, _, err = run_cli("serve", str(tmp_path / "no-such-model"), "--port", "0", capsys=capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not found" in lines[0] and "no-such-model" in lines[0]
    assert "Traceback" not in err


def test_an_unset_api_key_variable_is_one_line_and_exit_2(lm_dir, capsys, monkeypatch):
    monkeypatch.delenv("POTSTILL_NO_SUCH_KEY", raising=False)
    code, _, err = run_cli(
        "serve", str(lm_dir), "--api-key-env", "POTSTILL_NO_SUCH_KEY", capsys=capsys
    )
    assert code == 2
    assert err.strip() == (
        "error: --api-key-env POTSTILL_NO_SUCH_KEY: the environment variable "
        "POTSTILL_NO_SUCH_KEY is not set or empty; export POTSTILL_NO_SUCH_KEY=<your key> "
        "first, or leave out --api-key-env"
    )


def test_serve_off_loopback_warns_requires_the_key_and_never_prints_it(lm_dir):
    env = {**os.environ, "POTSTILL_TEST_KEY": KEY}
    command = [sys.executable, "-m", "potstill", "serve", str(lm_dir), "--host", "0.0.0.0"]
    command += ["--port", "0", "--api-key-env", "POTSTILL_TEST_KEY", "--max-batch", "2"]
    command += ["--threads", "1"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        port = None
        while port is None:
            assert process.poll() is None, "".join(err_lines)
            assert time.monotonic() < deadline, "".join(err_lines)
            found = [re.search(r"at http://0\.0\.0\.0:(\d+)/v1", line) for line in err_lines]
            port = next((int(m.group(1)) for m in found if m), None)
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=url, api_key=KEY, max_retries=0)
        out = client.completions.create(model=str(lm_dir), prompt="To be", max_tokens=3)
        assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).models.list()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)  # not communicate(): it would race the reader for stderr
        stdout = process.stdout.read()
        reader.join(timeout=10)
    err = "".join(err_lines)
    assert process.returncode == 0, err
    assert "warning: serving on 0.0.0.0, which other machines can reach" in err
    assert "(API key required)" in err and "stopped" in err
    logs = err + stdout
    assert '"POST /v1/completions HTTP/1.1" 200' in logs  # uvicorn's access log is there…
    assert '"GET /v1/models HTTP/1.1" 401' in logs
    assert KEY not in logs  # …and the key is not
