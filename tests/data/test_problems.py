"""Problems with checkable answers: reasoning-gym's generators, the answer reader and the
check against each generator's own scorer."""

from __future__ import annotations

import pytest

from potstill.data.problems import ProblemSet, extract_answer
from potstill.util.errors import PotstillError

SUMS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so <answer> 42 </answer> and then 7", "42"),
        ("60 + 93 = 153\nThe final answer is \\(\\boxed{153}\\).", "153"),
        ("12 + 7 = 19, 19 - 4 = 15. Answer: 15. Then 99 more.", "15"),
        ("The answer is -1,015.", "-1015"),
        ("first 3, then 4, so 12.", "12"),
        ("2.5 + 1 = 3.5", "3.5"),
        ("no digits here", None),
    ],
)
def test_the_final_answer_is_read_by_the_most_explicit_rule(text, answer):
    assert extract_answer(text) == answer


def test_problems_are_seeded_distinct_and_checked_by_their_generator():
    test = ProblemSet.generate("chain_sum", size=20, seed=1, options=SUMS)
    again = ProblemSet.generate("chain_sum", size=20, seed=1, options=SUMS)
    assert [p.question for p in test.problems] == [p.question for p in again.problems]
    train = ProblemSet.generate(
        "chain_sum", size=40, seed=0, options=SUMS, exclude=test.questions()
    )
    assert len(train) == 40 and not train.questions() & test.questions()
    problem = test.problems[0]
    right = test.check(0, f"Step by step... so the answer is {problem.answer}.")
    assert right.correct and right.answer == problem.answer
    wrong = test.check(0, f"The answer is {int(problem.answer) + 1}.")
    assert not wrong.correct and wrong.answer == str(int(problem.answer) + 1)
    silent = test.check(0, "I cannot say.")
    assert silent == type(silent)(None, False)


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("no_such_gym", {}, r"cannot make 'no_such_gym'.*datasets include"),
        ("chain_sum", {"colour": 3}, r"cannot make 'chain_sum' with options \{'colour': 3\}"),
        ("chain_sum", {"min_terms": 5, "max_terms": 2}, r"max_terms must be >= min_terms"),
    ],
)
def test_a_generator_that_cannot_be_made_is_one_line(dataset, options, message):
    with pytest.raises(PotstillError, match=message) as error:
        ProblemSet.generate(dataset, size=3, seed=0, options=options)
    assert "\n" not in str(error.value)


def test_too_few_distinct_problems_is_refused():
    tiny = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    with pytest.raises(PotstillError, match="distinct problems"):
        ProblemSet.generate("chain_sum", size=2000, seed=0, options=tiny)
    with pytest.raises(PotstillError, match="at least one"):
        ProblemSet.generate("chain_sum", size=0, seed=0)
