"""Teachers: where a training step's teacher signal comes from.

A `TeacherSource` answers ``outputs(batch, request) -> TeacherOutputs``. `LiveTeacher` runs
a local model (the one path both training and `potstill teach` use); the teacher cache
(`potstill.cache`) answers the same call from disk. A teacher may read a different input
than the student (`LiveTeacher(prefix_ids=…)`: a prompt the student never sees), with its
outputs cut back to the student's positions. `EndpointClient` (``teacher: openai:MODEL``)
asks an OpenAI-compatible endpoint for text, with retries, a rate limit and token counts.
"""

from potstill.teachers.base import TeacherSource
from potstill.teachers.live import LiveTeacher

__all__ = ["LiveTeacher", "TeacherSource"]
