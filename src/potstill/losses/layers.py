"""Layer maps: which student layer a hidden-state or attention term compares with which
teacher layer.

Indices follow HF's ``output_hidden_states``: hidden state ``0`` is the embeddings,
``i`` the output of block ``i − 1`` (the input of block ``i``), and ``L`` (the number of
blocks) the final state after the last norm. Attention maps are indexed by block,
``0 .. L − 1``.

``auto`` maps:
- a student cut from the teacher's blocks ``kept`` (``student.from_teacher.layers``):
  hidden state ``i`` (the input of the student's block ``i``, a copy of teacher block
  ``kept[i]``) against the teacher's hidden state ``kept[i]`` (the input that block had
  in the teacher), for ``i = 1 .. n − 1``; attention of block ``i`` against teacher block
  ``kept[i]``;
- any other student: evenly spaced, hidden ``i ↦ round(i · L_t / L_s)`` for
  ``i = 1 .. L_s − 1``, attention block ``i ↦ round((i + 1) · L_t / L_s) − 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

Pairs = tuple[tuple[int, int], ...]


def auto_layer_map(
    kind: str, *, student_layers: int, teacher_layers: int, kept: Sequence[int] | None = None
) -> Pairs:
    """The ``auto`` map for a ``"hidden"`` or ``"attention"`` term (module doc).

    >>> auto_layer_map("hidden", student_layers=3, teacher_layers=12, kept=[0, 1, 11])
    ((1, 1), (2, 11))
    >>> auto_layer_map("hidden", student_layers=3, teacher_layers=12)
    ((1, 4), (2, 8))
    >>> auto_layer_map("attention", student_layers=3, teacher_layers=12)
    ((0, 3), (1, 7), (2, 11))
    """
    if kind not in ("hidden", "attention"):
        raise ValueError(f"layer maps apply to hidden and attention terms, not {kind!r}")
    if kept is not None:
        if len(kept) != student_layers:
            raise ValueError(f"kept {list(kept)} names {len(kept)} blocks, not {student_layers}")
        first = 1 if kind == "hidden" else 0
        return tuple((i, int(kept[i])) for i in range(first, student_layers))
    if kind == "hidden":
        return tuple(
            (i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers)
        )
    return tuple(
        (i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)
    )


def check_layer_map(
    loss: str, kind: str, pairs: Pairs, *, student_layers: int, teacher_layers: int
) -> None:
    """Refuse, in one line, a map naming a layer a model does not have or a student layer
    twice."""
    if not pairs:
        raise ValueError(f"loss term {loss}: the layer map is empty; map at least one layer")
    last = (lambda n: n) if kind == "hidden" else (lambda n: n - 1)
    what = "hidden states" if kind == "hidden" else "attention blocks"
    seen: set[int] = set()
    for student, teacher in pairs:
        if student in seen:
            raise ValueError(f"loss term {loss}: student layer {student} is mapped twice")
        seen.add(student)
        for side, index, depth in (
            ("student", student, student_layers),
            ("teacher", teacher, teacher_layers),
        ):
            if not 0 <= index <= last(depth):
                raise ValueError(
                    f"loss term {loss}: layer map {student}→{teacher} is impossible: the "
                    f"{side} has {what} 0..{last(depth)} ({depth} blocks)"
                )
