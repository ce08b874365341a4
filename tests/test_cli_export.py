"""`potstill export` through the command line: each format written and read back, and
the refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("to", "name", "extra"),
    [("gguf", "m.gguf", ["--qtype", "q8_0"]), ("onnx", "onnx", []), ("hf", "hf", [])],
)
def test_export_writes_and_checks_each_format(tmp_path, tiny_teacher_dir, capsys, to, name, extra):
    out = tmp_path / name
    code, stdout, err = run_cli(
        "export", str(tiny_teacher_dir), "--to", to, "--out", str(out), *extra, capsys=capsys
    )
    assert code == 0, err
    assert out.exists() and f"exported: {out}" in stdout
    if to != "hf":  # read back: the logits agree with the model's
        assert "check: max |logit difference|" in stdout and "top-1 agreement 100.0%" in stdout


def test_export_refusals_write_nothing(tmp_path, tiny_teacher_dir, capsys):
    quantized, teacher = tmp_path / "q", str(tiny_teacher_dir)
    assert run_cli("quantize", teacher, "--out", str(quantized), capsys=capsys)[0] == 0
    cases = [
        (["export", teacher, "--to", "tflite", "--out", str(tmp_path / "a")], "choose hf, gguf"),
        (["export", teacher, "--to", "onnx", "--out", str(tmp_path / "b"), "--qtype", "q4_0"],
         "is for --to gguf"),
        (["export", str(quantized), "--to", "onnx", "--out", str(tmp_path / "c")],
         "torchao-quantized"),
        (["export", str(quantized), "--to", "gguf", "--out", str(tmp_path / "c.gguf"),
          "--qtype", "q8_0"], "its integers go into GGUF as q4_0"),
        (["export", teacher, "--to", "hf", "--out", str(tmp_path / "d"), "--keep-adapter"],
         "no adapter"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = run_cli(*args, capsys=capsys)
        assert code == 2 and message in _error(err), (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_a_quantized_student_exports_to_gguf_with_its_own_integers(
    tmp_path, tiny_teacher_dir, capsys
):
    quantized, out = tmp_path / "q", tmp_path / "q.gguf"
    assert (
        run_cli("quantize", str(tiny_teacher_dir), "--out", str(quantized), capsys=capsys)[0] == 0
    )
    code, stdout, err = run_cli(
        "export", str(quantized), "--to", "gguf", "--out", str(out), capsys=capsys
    )
    assert code == 0, err
    # read back against the quantized model itself: the same integers, scales in float16
    assert f"exported: {out}" in stdout and "top-1 agreement 100.0%" in stdout
    assert oct(out.stat().st_mode & 0o777) == oct(0o644 & ~_umask())  # readable as files are


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
