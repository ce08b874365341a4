"""potstill: distill a large language model into a small one, and measure what it kept.

The package is cut into layers that import one way only (a test keeps it so)::

    util → signals → losses → models, data → teachers, generation → cache → synth → tasks
         → train → evaluation → config → pipeline, serve → api → cli

The public API is available from here: `run`, `teach`, `distill`, `label`, `generate`,
`evaluate`, `load_recipe`, the `Recipe` and `RunResult` types, the typed `Report`, the
losses (`potstill.losses`) and the teacher-signal types (`potstill.signals`). They are
imported on first use, so ``import potstill`` (and the command line's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# torchao (imported by transformers whenever it is installed) warns at import time about
# GPU-only extensions it cannot load on a CPU machine, and torch about its enum
# registrations: noise on every command, about nothing potstill uses.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

_EXPORTS = {
    "run": "potstill.api",
    "teach": "potstill.api",
    "distill": "potstill.api",
    "label": "potstill.api",
    "generate": "potstill.api",
    "evaluate": "potstill.api",
    "quantize": "potstill.api",
    "export": "potstill.api",
    "load_recipe": "potstill.api",
    "Recipe": "potstill.config",
    "Report": "potstill.evaluation.report",
    "RunResult": "potstill.pipeline",
    "DenseSignal": "potstill.signals",
    "SparseSignal": "potstill.signals",
    "TeacherOutputs": "potstill.signals",
    "SignalRequest": "potstill.signals",
    "PotstillError": "potstill.util.errors",
}
__all__ = ["__version__", "losses", "signals", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in ("losses", "signals"):
        return importlib.import_module(f"potstill.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'potstill' has no attribute {name!r}")
