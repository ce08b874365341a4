"""The one interface every teacher source implements."""

from __future__ import annotations

from typing import Protocol

from potstill.data.batch import Batch
from potstill.signals import SignalRequest, TeacherOutputs


class TeacherSource(Protocol):
    def outputs(self, batch: Batch, request: SignalRequest) -> TeacherOutputs:
        """The teacher's outputs for ``batch``, only the parts ``request`` asks for.

        Token distributions are next-token predictions aligned with the shifted labels:
        ``(B, L − 1, …)``, position ``t`` predicting token ``t + 1``. Hidden states are
        ``(B, L, H)`` and attention maps ``(B, heads, L, L)``, at the student's positions.
        """
        ...
