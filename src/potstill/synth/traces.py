"""Rejection sampling of reasoning traces: every trace the teacher wrote for a problem is
checked (its final answer against the problem's scorer) and only those that check are
kept for the student; the checks' counts say how often the teacher was right."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from potstill.data.problems import ProblemSet
from potstill.synth.generate import messages_of

Chat = tuple[list[dict[str, str]], str]  # (turns up to the assistant's, the assistant's reply)


@dataclass(frozen=True)
class Trace:
    """One trace the teacher wrote: which problem and sample, its text, how it checked."""

    problem: int
    sample: int
    text: str
    answer: str | None
    correct: bool
    finish_reason: str | None


@dataclass(frozen=True)
class Traces:
    """All traces of a problem set, checked."""

    problems: ProblemSet
    traces: list[Trace]
    samples: int  # traces asked per problem

    @property
    def kept(self) -> list[Trace]:
        return [t for t in self.traces if t.correct]

    def stats(self) -> dict[str, Any]:
        """Counts for the report: traces written and kept, problems with a kept trace."""
        solved = {t.problem for t in self.kept}
        return {
            "traces": len(self.traces),
            "kept": len(self.kept),
            "kept_share": len(self.kept) / len(self.traces) if self.traces else None,
            "problems": len(self.problems),
            "problems_with_a_kept_trace": len(solved),
            "samples_per_problem": self.samples,
            "no_answer": sum(t.answer is None for t in self.traces),
            "truncated": sum(t.finish_reason == "length" for t in self.traces),
        }

    def trace_chats(self, system: str | None, *, checked: bool = True) -> list[Chat]:
        """(question chat, trace) for each kept trace (every trace when not ``checked``)."""
        chosen = self.kept if checked else self.traces
        return [(self._chat(t.problem, system), t.text) for t in chosen]

    def answer_chats(self, system: str | None) -> list[Chat]:
        """(question chat, the gold final answer alone) for each kept trace: the same
        problems, as often, with no reasoning."""
        return [
            (self._chat(t.problem, system), self.problems.problems[t.problem].answer)
            for t in self.kept
        ]

    def _chat(self, problem: int, system: str | None) -> list[dict[str, str]]:
        return messages_of(self.problems.problems[problem].question, system)


def check_traces(rows: Sequence[dict[str, Any]], problems: ProblemSet, *, samples: int) -> Traces:
    """Check every generated row (``prompt``: the question, ``sample``, ``response``)
    against the problem it answers; a row whose question is not in ``problems`` is an
    error (the generations belong to another problem set)."""
    traces = []
    for row in rows:
        problem = problems.index_of(row["prompt"])
        check = problems.check(problem, row["response"])
        traces.append(
            Trace(
                problem,
                int(row["sample"]),
                row["response"],
                check.answer,
                check.correct,
                row.get("finish_reason"),
            )
        )
    return Traces(problems, traces, samples)
