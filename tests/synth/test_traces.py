"""Rejection sampling: traces are checked against their problems, only those whose
final answer checks are kept, and the answers-only set asks the same problems as often."""

from __future__ import annotations

import pytest

from potstill.data.problems import ProblemSet
from potstill.synth.traces import check_traces
from potstill.util.errors import PotstillError

SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}


def _rows(problems: ProblemSet) -> list[dict]:
    rows = []
    for p in problems.problems:
        good = int(p.answer)
        rows.append({"prompt": p.question, "sample": 0, "response": f"so {good}."})
        rows.append({"prompt": p.question, "sample": 1, "response": f"so {good + 1}."})
    rows[-2]["response"] = "I give up"  # the last problem has no right trace
    rows[-2]["finish_reason"] = "length"
    return rows


def test_only_checked_traces_are_kept_and_answers_mirror_them():
    problems = ProblemSet.generate("chain_sum", size=4, seed=3, options=SUMS)
    traces = check_traces(_rows(problems), problems, samples=2)
    stats = traces.stats()
    assert (stats["traces"], stats["kept"], stats["problems_with_a_kept_trace"]) == (8, 3, 3)
    assert (stats["no_answer"], stats["truncated"]) == (1, 1)
    assert stats["kept_share"] == pytest.approx(3 / 8)
    chats = traces.trace_chats("Think.")
    answers = traces.answer_chats("Think.")
    assert len(chats) == len(answers) == 3
    for (turns, trace), (same_turns, answer), p in zip(
        chats, answers, problems.problems, strict=False
    ):
        assert (
            turns
            == same_turns
            == [
                {"role": "system", "content": "Think."},
                {"role": "user", "content": p.question},
            ]
        )
        assert trace == f"so {p.answer}." and answer == p.answer
    assert len(traces.trace_chats(None, checked=False)) == 8
    assert traces.trace_chats(None)[0][0] == [
        {"role": "user", "content": problems.problems[0].question}
    ]


def test_a_row_from_another_problem_set_is_refused():
    problems = ProblemSet.generate("chain_sum", size=2, seed=3, options=SUMS)
    rows = [{"prompt": "What is 1 + 1?", "sample": 0, "response": "2"}]
    with pytest.raises(PotstillError, match="not in the problem set"):
        check_traces(rows, problems, samples=1)
