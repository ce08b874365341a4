"""Export a student to every format and read each back: do its logits agree with the model's?

    .venv/bin/python bench/export.py --student runs/default-seed0/student \\
        [--work runs/bench-export] [--out bench/results/export.json]

GGUF at f16, q8_0 and q4_0 (checked through transformers' GGUF reader, and in llama.cpp
itself when ``llama-cpp-python`` is installed: ``pip install -e '.[llama]'``), ONNX (checked
in onnxruntime) and the merged HF folder. Each row: size, export seconds, the largest
|logit difference| against the HF model on `potstill.models.export.PROMPTS`, top-1
agreement, mean KL, whether the export's tokenizer gives the same ids, and whether the
format's stated tolerance holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from potstill.evaluation.size import size_on_disk
from potstill.models.export import (
    GGUF_TOLERANCES,
    LLAMA_CPP_TOLERANCES,
    ONNX_TOLERANCE,
    check_gguf,
    check_llama_cpp,
    check_onnx,
    export_gguf,
    export_hf,
    export_onnx,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="the student folder (or bundled:NAME)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-export"))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    try:
        import llama_cpp  # noqa: F401

        in_llama_cpp = True
    except ImportError:
        in_llama_cpp = False
    rows: list[dict[str, Any]] = []

    def row(fmt: str, path: Path, seconds: float, reader: str, check: Any, tolerance: Any) -> None:
        rows.append(
            {
                "format": fmt,
                "reader": reader,
                "bytes": _bytes(path),
                "export_seconds": seconds,
                **dataclasses.asdict(check),
                "within_tolerance": check.within(tolerance),
                "tolerance": dataclasses.asdict(tolerance),
            }
        )
        r = rows[-1]
        print(
            f"{fmt:<10} {reader:<12} {r['bytes'] / 1e6:7.1f} MB  max|Δ| {r['max_abs_diff']:.3g} "
            f"(logits up to {r['logit_scale']:.1f})  top-1 {r['top1_agreement']:.3f}  "
            f"KL {r['mean_kl']:.2g}  ids match {r['tokens_match']}  "
            f"within {r['within_tolerance']}",
            flush=True,
        )

    for qtype in ("f16", "q8_0", "q4_0"):
        began = time.perf_counter()
        path = export_gguf(args.student, args.work / f"student-{qtype}.gguf", qtype=qtype)
        seconds = time.perf_counter() - began
        check = check_gguf(args.student, path)
        row(f"gguf {qtype}", path, seconds, "transformers", check, GGUF_TOLERANCES[qtype])
        if in_llama_cpp:
            check = check_llama_cpp(args.student, path)
            row(f"gguf {qtype}", path, seconds, "llama.cpp", check, LLAMA_CPP_TOLERANCES[qtype])
    began = time.perf_counter()
    path = export_onnx(args.student, args.work / "onnx")
    seconds = time.perf_counter() - began
    row("onnx", path, seconds, "onnxruntime", check_onnx(args.student, path), ONNX_TOLERANCE)
    began = time.perf_counter()
    hf = export_hf(args.student, args.work / "hf")
    print(f"hf: {hf} ({size_on_disk(hf) / 1e6:.1f} MB, {time.perf_counter() - began:.1f} s)")
    if not in_llama_cpp:
        print("llama.cpp: not checked (llama-cpp-python is not installed here)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


def _bytes(path: Path) -> int:
    """A file's size, or a folder's weight files (``model.onnx`` and its external data)."""
    if path.is_file():
        return path.stat().st_size
    return size_on_disk(path) + sum(p.stat().st_size for p in path.glob("*.onnx*"))


if __name__ == "__main__":
    main()
