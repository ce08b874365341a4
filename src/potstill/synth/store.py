"""``labels.parquet``: the teacher's soft label for every text, kept atomically and resumed.

One row per text: ``text_id``, ``text_sha256``, ``logprobs`` (the teacher's raw
log-likelihood of every label, in label order), ``probs`` (the soft label: ``logprobs``
calibrated as ``task.calibrate`` says), ``label`` (its argmax), ``truncated`` (the text
was cut to fit the context), ``teacher``, ``teacher_sha256``. The file's metadata holds
the label names, the label prior measured on content-free inputs, the calibration, the
truncated count and the prompt's fingerprint. The table is rewritten atomically after
every ``shard_texts`` texts; a rerun keeps each row whose text, prompt and teacher are
unchanged and scores only the rest. The calibration is not part of the fingerprint: a
rerun with another one calibrates the kept raw scores again, scoring nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potstill.data.texts import TextSet
from potstill.synth.calibration import CalibrateMode, Calibration, fit_calibration
from potstill.synth.label import calibrate as label_prior
from potstill.synth.label import score_labels
from potstill.synth.prompt import LabelPrompt, LabelSpec, build_prompt
from potstill.synth.served_labels import ServedLabelScorer
from potstill.util.errors import PotstillError
from potstill.util.io import atomic_write_bytes
from potstill.util.log import Bar, bar
from potstill.util.log import log as _log

FORMAT_VERSION = 2  # 2: the raw scores (`logprobs`) kept, the calibration applied to them
_META_KEY = b"potstill.labels"


@dataclass
class LabelsTable:
    """The labels of a set of texts, as written to ``path``.

    ``logprobs`` is (N, L) float64, the teacher's raw label log-likelihoods; ``probs``
    (N, L) float64, the soft labels they give under ``calibration``, each row summing to
    1; ``prior`` is (L,), the teacher's label distribution on content-free inputs.
    ``scored`` counts the texts scored by the call that returned this table (the others
    were kept from an earlier run).
    """

    path: Path
    label_names: list[str]
    text_ids: list[int]
    text_sha256: list[str]
    logprobs: np.ndarray
    probs: np.ndarray
    truncated_rows: list[bool]
    teacher: str
    teacher_sha256: str
    prior: np.ndarray
    calibration: Calibration
    fingerprint: str
    plain_prompt: bool
    scored: int = 0

    def __len__(self) -> int:
        return len(self.text_ids)

    @property
    def labels(self) -> list[str]:
        """The teacher's hard label per text."""
        return [self.label_names[i] for i in self.probs.argmax(axis=1)] if len(self) else []

    @property
    def truncated(self) -> int:
        """How many texts were cut to fit the teacher's context."""
        return sum(self.truncated_rows)


def prompt_fingerprint(prompt: LabelPrompt, *, max_length: int | None) -> str:
    """sha256 of everything that decides a row's raw scores besides the text and teacher:
    the prompt's ids (few-shot examples included), the label ids and the context limit.
    The calibration is left out: it is applied to the raw scores, which it never changes."""
    settings = {
        "version": FORMAT_VERSION,
        "prefix_ids": prompt.prefix_ids,
        "tail_ids": prompt.tail_ids,
        "label_ids": prompt.label_ids,
        "label_names": prompt.label_names,
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def context_limit(model: torch.nn.Module, max_length: int | None) -> int | None:
    """The tokens a labelling sequence may take: ``max_length``, else the model's context
    (as `potstill.synth.label.score_labels` cuts texts)."""
    return max_length or getattr(model.config, "max_position_embeddings", None)


def read_labels(path: str | Path) -> LabelsTable:
    """A ``labels.parquet`` as written by `label_texts`."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[_META_KEY])
    except Exception as e:
        raise PotstillError(
            f"{path} is not a potstill labels table ({str(e)[:120]}); delete it to label again"
        ) from None
    if meta.get("version") != FORMAT_VERSION:
        raise PotstillError(
            f"{path} was written by another potstill version (format {meta.get('version')}, "
            f"this one reads {FORMAT_VERSION}); delete it to label again, or set name=NEW"
        )
    columns = table.to_pydict()
    names = meta["label_names"]
    cal = meta["calibration"]
    return LabelsTable(
        path=path,
        label_names=names,
        text_ids=columns["text_id"],
        text_sha256=columns["text_sha256"],
        logprobs=np.array(columns["logprobs"], dtype=np.float64).reshape(-1, len(names)),
        probs=np.array(columns["probs"], dtype=np.float64).reshape(-1, len(names)),
        truncated_rows=columns["truncated"],
        teacher=meta["teacher"],
        teacher_sha256=meta["teacher_sha256"],
        prior=np.array(meta["prior"], dtype=np.float64),
        calibration=Calibration(
            cal["mode"],
            np.array(cal["source"]),
            np.array(cal["target"]),
            cal["target_from"],
            cal.get("chosen_by"),
        ),
        fingerprint=meta["fingerprint"],
        plain_prompt=meta["plain_prompt"],
    )


def check_resumable(
    path: Path,
    fingerprint: str,
    teacher_sha256: str,
    *,
    replace: bool = False,
    log: Callable[[str], None] = _log,
) -> LabelsTable | None:
    """The existing table at ``path`` if it was made with the same prompt and teacher; None
    when there is none. A table made with others (or unreadable) is a one-line error, or
    with ``replace`` (a resumed run whose prompt or teacher changed) None: it is labelled
    again from the start."""
    if not path.exists():
        return None
    try:
        old = read_labels(path)
        if old.teacher_sha256 != teacher_sha256:
            raise PotstillError(
                f"{path} was labelled by another teacher ({old.teacher}); "
                "set name=NEW to label into a new run"
            )
        if old.fingerprint != fingerprint:
            raise PotstillError(
                f"{path} was labelled with other labels or another prompt (labels "
                f"{old.label_names}); set name=NEW to label into a new run"
            )
    except PotstillError as e:
        if not replace:
            raise
        log(f"labels: {str(e).split(';')[0]}; labelling every text again")
        return None
    return old


def label_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    teacher_ref: str,
    teacher_sha256: str,
    texts: TextSet,
    spec: LabelSpec,
    *,
    path: str | Path,
    calibrate: CalibrateMode = "none",
    gold_prior: np.ndarray | None = None,
    gold: Sequence[int] | None = None,
    replace: bool = False,
    batch_size: int = 8,
    max_length: int | None = None,
    shard_texts: int = 256,
    log: Callable[[str], None] = _log,
    progress: Callable[..., AbstractContextManager[Bar]] = bar,
    served: ServedLabelScorer | None = None,
) -> LabelsTable:
    """Label every text of ``texts`` with ``model``'s distribution over ``spec``'s labels
    into ``path`` (``labels.parquet``), saved atomically every ``shard_texts`` texts.
    With ``served`` the labels are scored by the server that serves ``model`` instead
    (``model`` then only bounds the context).

    Rows already in ``path`` for the same (text id, text sha256), prompt and teacher are
    kept, not scored again; a table made with other labels or another teacher is refused
    (with ``replace``, labelled again). The soft labels are the raw scores calibrated
    as ``calibrate`` says (`potstill.synth.calibration.fit_calibration`; ``gold_prior``
    (L,) is the user's gold label frequencies for these texts, for ``prior``; ``gold``
    their gold label ids, one per text of ``texts``, for ``auto`` to choose by), fitted
    on every row; the content-free prior is measured and reported whatever the mode.
    """
    path = Path(path)
    prompt = build_prompt(tokenizer, spec)
    if prompt.plain:
        log("the teacher's tokenizer has no chat template: using a plain 'Text: … Answer:' prompt")
    limit = context_limit(model, max_length)
    fingerprint = prompt_fingerprint(prompt, max_length=limit)
    old = check_resumable(path, fingerprint, teacher_sha256, replace=replace, log=log)

    shas = texts.sha256s
    rows: dict[int, tuple[str, np.ndarray, bool]] = {}  # text id -> (sha, logprobs, truncated)
    if old is not None:
        current = dict(zip(texts.ids, shas, strict=True))
        for i, text_id in enumerate(old.text_ids):
            if current.get(text_id) == old.text_sha256[i]:
                rows[text_id] = (old.text_sha256[i], old.logprobs[i], old.truncated_rows[i])
    todo = [k for k, text_id in enumerate(texts.ids) if text_id not in rows]
    if rows:
        log(f"labels: {len(rows)} of {len(texts)} texts already labelled in {path}, kept")

    # The same prompt and teacher give the same content-free prior: kept, not scored again.
    if old is not None:
        prior = old.prior
    elif served is not None:
        prior = served.prior(prompt, batch_size=batch_size)
    else:
        prior = label_prior(model, prompt, batch_size=batch_size)
    score = partial(score_labels, model) if served is None else served.score
    empty = np.zeros((0, len(prompt.label_names)))
    table = LabelsTable(
        path=path,
        label_names=prompt.label_names,
        text_ids=[],
        text_sha256=[],
        logprobs=empty,
        probs=empty,
        truncated_rows=[],
        teacher=teacher_ref,
        teacher_sha256=teacher_sha256,
        prior=prior,
        calibration=fit_calibration(calibrate, empty, prior, gold_prior, _gold_rows(None, [])),
        fingerprint=fingerprint,
        plain_prompt=prompt.plain,
    )

    gold_of = None if gold is None else dict(zip(texts.ids, gold, strict=True))

    def fill() -> None:  # the rows present, in the texts' order, calibrated on all of them
        _fill(table, texts, rows)
        table.calibration = fit_calibration(
            calibrate, table.logprobs, prior, gold_prior, _gold_rows(gold_of, table.text_ids)
        )
        table.probs = table.calibration.apply(table.logprobs)

    with progress("labelling", total=len(texts), completed=len(texts) - len(todo)) as shown:
        for start in range(0, len(todo), shard_texts):
            chosen = todo[start : start + shard_texts]
            shard = [texts.texts[k] for k in chosen]
            scores = score(prompt, shard, batch_size=batch_size, max_length=limit)
            for row, k in enumerate(chosen):
                cut = prompt.fit(texts.texts[k], limit)[1]
                rows[texts.ids[k]] = (shas[k], scores.logprobs[row], cut)
            table.scored += len(chosen)
            fill()
            write_labels(table)
            shown.advance(len(chosen))
    if not todo:  # nothing scored: rows of texts gone are dropped, the calibration refitted
        fill()
        write_labels(table)
        if old is not None and old.calibration.mode != table.calibration.mode:
            log(
                f"labels: calibrated again ({old.calibration.mode} -> "
                f"{table.calibration.mode}), none scored"
            )
    log(
        f"labels: {table.scored} texts scored, {len(table) - table.scored} kept; prior "
        f"{format_prior(table)}; calibration {format_calibration(table)}; "
        f"{table.truncated} truncated"
    )
    return table


def _gold_rows(gold_of: dict[int, int] | None, text_ids: list[int]) -> np.ndarray | None:
    """The gold label ids of the table's rows, in its order (None without gold labels)."""
    if gold_of is None:
        return None
    return np.array([gold_of[text_id] for text_id in text_ids], dtype=np.int64)


def format_prior(table: LabelsTable) -> str:
    """The prior as ``name=p`` pairs.

    >>> t = LabelsTable(Path("x"), ["a", "b"], [], [], np.zeros((0, 2)), np.zeros((0, 2)),
    ...                 [], "t", "s", np.array([0.25, 0.75]),
    ...                 fit_calibration("none", np.zeros((0, 2)), np.ones(2) / 2), "f", False)
    >>> format_prior(t)
    'a=0.250 b=0.750'
    """
    return " ".join(f"{n}={p:.3f}" for n, p in zip(table.label_names, table.prior, strict=True))


def format_calibration(table: LabelsTable) -> str:
    """The calibration as its mode and, when it moves the labels, the prior it aims at."""
    cal = table.calibration
    chosen = ""
    if cal.chosen_by is not None:
        tried = ", ".join(f"{mode} {accuracy:.1%}" for mode, accuracy in cal.chosen_by.items())
        chosen = (
            f" (auto: accuracy on the gold-labelled train texts {tried})"
            if tried
            else " (auto: no gold-labelled train texts)"
        )
    if cal.mode == "none":
        return "none" + chosen
    target = " ".join(f"{n}={p:.3f}" for n, p in zip(table.label_names, cal.target, strict=True))
    return f"{cal.mode} (towards {cal.target_from} {target}){chosen}"


def write_labels(table: LabelsTable) -> None:
    """Write ``table`` to ``table.path`` atomically (a reader sees the old file or this)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {
        "version": FORMAT_VERSION,
        "label_names": table.label_names,
        "prior": [float(x) for x in table.prior],
        "calibration": table.calibration.summary(),
        "truncated": table.truncated,
        "fingerprint": table.fingerprint,
        "plain_prompt": table.plain_prompt,
        "teacher": table.teacher,
        "teacher_sha256": table.teacher_sha256,
    }
    n = len(table)
    arrow = pa.table(
        {
            "text_id": pa.array(table.text_ids, pa.int64()),
            "text_sha256": pa.array(table.text_sha256, pa.string()),
            "logprobs": pa.array(
                [list(map(float, p)) for p in table.logprobs], pa.list_(pa.float64())
            ),
            "probs": pa.array([list(map(float, p)) for p in table.probs], pa.list_(pa.float64())),
            "label": pa.array(table.labels, pa.string()),
            "truncated": pa.array(table.truncated_rows, pa.bool_()),
            "teacher": pa.array([table.teacher] * n, pa.string()),
            "teacher_sha256": pa.array([table.teacher_sha256] * n, pa.string()),
        }
    ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    atomic_write_bytes(table.path, buffer.getvalue())


def _fill(
    table: LabelsTable, texts: TextSet, rows: dict[int, tuple[str, np.ndarray, bool]]
) -> None:
    """Set ``table``'s rows to those of ``rows`` present, in the texts' order."""
    ids = [text_id for text_id in texts.ids if text_id in rows]
    table.text_ids = ids
    table.text_sha256 = [rows[i][0] for i in ids]
    table.logprobs = np.array([rows[i][1] for i in ids]).reshape(len(ids), len(table.label_names))
    table.truncated_rows = [bool(rows[i][2]) for i in ids]
