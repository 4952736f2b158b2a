"""Grading: equivalent / non-equivalent answers, pathological outputs, the hard time limit."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import DATA_SKIP
from tah.evaluation.grading import Grader, grade_text

# (model output, gold, answer type, expected correct)
TABLE = [
    # boxed variants
    ("The answer is \\boxed{18}.", "18", "expr", True),
    ("so $\\boxed{18}$", "18", "expr", True),
    ("\\boxed 18", "18", "expr", True),
    ("<think>hmm</think> Final: \\boxed{ 18 }", "18", "expr", True),
    ("\\boxed{17}", "18", "expr", False),
    ("\\boxed{19} then \\boxed{18}", "18", "expr", False),  # several boxes = a set, not 18
    # fractions vs decimals
    ("\\boxed{\\frac{1}{2}}", "0.5", "expr", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", "latex", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", "latex", True),
    ("\\boxed{0.75}", "\\frac{2}{3}", "latex", False),
    # GSM8K numbers with thousands separators
    ("\\boxed{2,125}", "2125", "expr", True),
    ("The answer is $2,125$", "2125", "expr", True),
    ("\\boxed{2,126}", "2125", "expr", False),
    # units
    ("\\boxed{10\\text{ cm}}", "10", "latex", True),
    ("\\boxed{10 \\mathrm{cm}}", "10", "expr", True),
    ("\\boxed{12\\text{ cm}}", "10", "latex", False),
    # structured answers
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", "latex", True),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", "latex", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", "latex", True),
]

PATHOLOGICAL = [
    "",
    "   \n\t ",
    "\\boxed{",
    "\\boxed{1}}}}}{{{",
    "}" * 500 + "{" * 500,
    "\\boxed{" + "9" * 20000 + "}",
    "\\boxed{\\frac{1}{0}}",
    "x" * 200_000,
    "\\boxed{\x00\x01\udcff}",
]


@pytest.fixture(scope="module")
def grader():
    g = Grader(time_limit_s=3)
    yield g
    g.close()


@pytest.mark.parametrize(("output", "gold", "kind", "expected"), TABLE)
def test_grader_table(grader, output, gold, kind, expected):
    grade = grader.grade(output, gold, kind)
    assert grade.correct is expected, (output, gold, grade)
    assert grade.status == "ok"
    assert grade.has_answer


def test_in_process_grading_agrees_with_isolated(grader):
    for output, gold, kind, expected in TABLE[:8]:
        assert grade_text(output, gold, kind).correct is expected
        assert Grader(isolate=False).grade(output, gold, kind).correct is expected


@pytest.mark.parametrize("output", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_outputs_are_wrong_not_fatal(grader, output):
    start = time.monotonic()
    grade = grader.grade(output, "18", "latex")
    assert grade.correct is False
    assert grade.status in ("no_answer", "error", "timeout", "ok")
    assert time.monotonic() - start < 10


def test_empty_output_has_no_answer(grader):
    grade = grader.grade("", "18", "expr")
    assert (grade.correct, grade.status, grade.extracted) == (False, "no_answer", None)


def test_power_tower_times_out_and_grader_recovers():
    # The inner (signal) limit is set above the outer limit, so only the hard kill can stop it.
    g = Grader(time_limit_s=1.0)
    g._inner = 30
    try:
        g.grade("\\boxed{1}", "1", "expr")  # start the child outside the measured window
        start = time.monotonic()
        grade = g.grade("\\boxed{9^{9^{9^{9}}}}", "18", "expr")
        assert grade.status == "timeout" and grade.correct is False
        assert time.monotonic() - start < 5
        assert g.restarts == 1
        assert g.grade("\\boxed{18}", "18", "expr").correct  # a fresh child answers
    finally:
        g.close()


def test_grader_works_off_the_main_thread(grader):
    results = []
    thread = threading.Thread(
        target=lambda: results.append(grader.grade("\\boxed{7}", "7", "expr"))
    )
    thread.start()
    thread.join(60)
    assert results and results[0].correct


def test_bad_gold_is_reported(grader):
    assert grader.grade("\\boxed{1}", "", "latex").status in ("bad_gold", "no_answer")


def test_unknown_answer_type_is_a_user_error(grader):
    from tah.errors import ConfigError

    with pytest.raises(ConfigError, match="answer type"):
        grader.grade("\\boxed{1}", "1", "number")


def test_paper_profile_reproduces_the_reference_quirk(grader):
    assert grader.grade("\\boxed{\\frac43}", "\\frac43", "latex").correct
    assert grader.grade("\\boxed{\\$36}", "\\$36", "latex").correct  # "\$" is not a delimiter
    with Grader(time_limit_s=3, profile="paper") as paper:
        assert not paper.grade("\\boxed{\\frac43}", "\\frac43", "latex").correct
        assert paper.grade("\\boxed{\\frac{4}{3}}", "\\frac43", "latex").correct


def test_shared_gold_answers_verify_against_themselves():
    from tah.evaluation.datasets import find_local, load_eval_dataset

    names = [n for n in ("math500", "amc23", "aime24", "gsm8k") if find_local(n)]
    if not names:
        pytest.skip(DATA_SKIP)
    wrong = []
    for name in names:
        problems = load_eval_dataset(name).problems
        for p in problems[:300] if name == "gsm8k" else problems:
            out = f"So the final answer is \\boxed{{{p.answer}}}."
            if not grade_text(out, p.answer, p.answer_type).correct:
                wrong.append((name, p.id, p.answer))
    assert wrong == []
